"""``normfree bench MODEL...``: training or inference speed and memory against in-process baselines."""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics

import torch
from torch import nn

from ..bench import BenchConfig, BenchResult, run_benchmark
from ..checks import NONNEGATIVE_INT, POSITIVE_INT, check_number, check_out_file, require_device
from ..resources import check_batch_fits
from ..errors import NormfreeError
from ..deploy import deploy
from ..registry import create_model, list_models, parse_model_spec
from .options import add_batch_size, add_data, add_flag, add_image_size

TIMM_BASELINES = {"nf_resnet50": ("nf_resnet50", "resnet50")}
"""Our model name → timm models benchmarked beside it when timm is installed."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("bench", help="images/s, latency and peak memory vs baselines",
                              description=__doc__)
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="registered name, or NAME:key=value,... (e.g. nf_resnet50:stochdepth_rate=0; "
                        "the BN twin gets the same options)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--train", dest="mode", action="store_const", const="train",
                      help="forward + backward + SGD step (default)")
    mode.add_argument("--infer", dest="mode", action="store_const", const="infer",
                      help="forward under inference_mode, eval mode")
    p.set_defaults(mode="train", func=run, in_chans=3)
    add_batch_size(p, 8, "images per step (default: 8)", old=("--batch",))
    add_image_size(p, None, "square input resolution (default: the --data images' size, else 224)",
                   old=("--size",))
    add_data(p, "time inputs shaped like this data set's images (size, channels, class count) instead of "
                "224 px RGB")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile every model (default backend: inductor)")
    add_flag(p, "--deploy", help="--infer on normfree.deploy(model): folded NF nets vs BN-folded twins")
    add_flag(p, "--channels-last", None, "default: on for CUDA, off for CPU")
    add_flag(p, "--amp", None, "bf16 autocast; default: on for CUDA, off for CPU")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per model")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per model per round")
    add_flag(p, "--grad-checkpointing",
             help="--train with every model's blocks recomputed in backward (timm's too)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    p.add_argument("--num-classes", type=int, default=None, help="default: the --data's, else the model's own")
    add_flag(p, "--baseline", True, "add BN twins / timm models (default: on)")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the results as JSON")


def _data_shape(args: argparse.Namespace) -> None:
    """Take image size, channels and class count from ``--data`` where no flag sets them."""
    from ..train.data import ArrayData, check_splits, load_data

    train, test = (load_data(args.data, split, 0, args.image_size or 224) for split in ("train", "test"))
    if args.num_classes is None:
        args.num_classes = check_splits(train, test, None)
    if isinstance(train, ArrayData):
        args.in_chans = int(train.x.shape[-1])
        if args.image_size is None:
            args.image_size = int(train.x.shape[1])


def _deploy_foreign(model: nn.Module) -> nn.Module:
    """Eval copy of a model normfree.deploy does not know (timm): conv→BatchNorm pairs folded by torch.fx.

    This makes timm's resnet50 a BN-folded baseline; timm's NF convs keep standardizing per call (timm
    has no deploy mode).
    """
    model = copy.deepcopy(model).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return model
    from torch.fx.experimental.optimization import fuse
    return fuse(model, inplace=True)


def _models(args: argparse.Namespace) -> tuple[dict[str, nn.Module], dict[str, list[str]], list[str]]:
    """(spec → model, spec → its baselines' specs, the first one printed in its row, notes)."""
    known = set(list_models())
    specs = {spec: parse_model_spec(spec) for spec in args.models}
    unknown = [spec for spec, (name, _) in specs.items() if name not in known]
    if unknown:
        raise NormfreeError(f"unknown model(s) {unknown}; `normfree models` lists all")
    names, baseline, notes = list(args.models), {}, []
    if args.baseline:
        for spec, (name, kwargs) in list(specs.items()):
            twin = "bn_" + name[3:]
            if name.startswith("nf_") and twin in known:
                twin_spec = "bn_" + spec[3:]
                baseline[spec] = [twin_spec]
                specs.setdefault(twin_spec, (twin, kwargs))
                if twin_spec not in names:
                    names.append(twin_spec)
    extra = {} if args.num_classes is None else {"num_classes": args.num_classes}
    if args.in_chans != 3:
        extra["in_chans"] = args.in_chans
    models = {}
    for spec in names:
        name, kwargs = specs[spec]
        try:
            models[spec] = create_model(name, **kwargs, **extra)
        except (TypeError, ValueError) as e:
            raise NormfreeError(f"cannot build {spec!r}: {e}") from e
    wanted = any(TIMM_BASELINES.get(name) for name, _ in specs.values())
    if wanted and args.baseline:
        try:
            import timm
        except ImportError:
            notes.append("timm is not installed: timm baselines (nf_resnet50, resnet50) not measured")
        else:
            for spec in args.models:
                for t in TIMM_BASELINES.get(specs[spec][0], ()):
                    baseline.setdefault(spec, []).append(f"timm:{t}")
                    if f"timm:{t}" not in models:
                        models[f"timm:{t}"] = timm.create_model(t, **extra)
            notes.append(f"timm {timm.__version__} models built with timm's defaults")
    if args.grad_checkpointing:
        for name, model in models.items():
            if not hasattr(model, "set_grad_checkpointing"):
                raise NormfreeError(f"{name} has no set_grad_checkpointing()")
            model.set_grad_checkpointing(True)
        notes.append("gradient checkpointing on every model")
    if args.deploy:
        models = {n: _deploy_foreign(m) if n.startswith("timm:") else deploy(m) for n, m in models.items()}
        notes.append("deploy mode: normfree.deploy() on every model (BN twins: BN folded into convs "
                     "where it follows one)"
                     + ("; timm models: eval copies with conv->BN folded by torch.fx (timm's NF convs "
                        "still standardize per call)" if any(n.startswith("timm:") for n in models) else ""))
    return models, baseline, notes


def _ratios(r: BenchResult, base: BenchResult) -> str:
    paired = r.round_ratios(base)
    return (f"{r.ratio(base):6.3f}x {statistics.median(paired):6.3f}x [{min(paired):5.3f}, "
            f"{max(paired):5.3f}] {r.peak_step_bytes / base.peak_step_bytes:6.3f}x  vs {base.name}")


def _row(r: BenchResult, base: BenchResult | None, width: int) -> str:
    mib = 2**20
    return (f"{r.name:{width}s} {r.images_per_s:9.2f} [{r.images_per_s_min:8.2f}, {r.images_per_s_max:8.2f}]"
            f" {r.latency_ms:9.1f} {r.peak_step_bytes / mib:9.1f} {r.resident_bytes / mib:9.1f}  "
            + (_ratios(r, base) if base else ""))


def run(args: argparse.Namespace) -> int:
    if args.deploy and args.mode != "infer":
        raise NormfreeError("--deploy measures inference: add --infer")
    if args.grad_checkpointing and args.mode != "train":
        raise NormfreeError("--grad-checkpointing only changes training: drop --infer")
    if args.data:
        _data_shape(args)
    if args.image_size is None:
        args.image_size = 224
    for option in ("batch_size", "image_size", "repeats", "steps"):
        check_number("--" + option.replace("_", "-"), getattr(args, option), POSITIVE_INT)
    check_number("--warmup", args.warmup, NONNEGATIVE_INT)
    if args.threads is not None:
        torch.set_num_threads(check_number("--threads", args.threads, POSITIVE_INT))
    require_device("--device", args.device)
    if args.json:
        check_out_file("--json", args.json)
    models, baseline, notes = _models(args)
    cfg = BenchConfig(mode=args.mode, batch=args.batch_size, size=args.image_size,
                      in_chans=args.in_chans, device=args.device,
                      compile=args.compile, channels_last=args.channels_last, amp=args.amp,
                      warmup=args.warmup, repeats=args.repeats, steps=args.steps)
    for model in models.values():
        check_batch_fits(model, (cfg.batch, cfg.in_chans, cfg.size, cfg.size), cfg.device, cfg.mode == "train")
    results = {r.name: r for r in run_benchmark(models, cfg)}
    print(f"mode={cfg.mode} batch={cfg.batch} size={cfg.size} device={cfg.device} "
          f"channels_last={cfg.use_channels_last} bf16={cfg.use_amp} compile={cfg.compile} "
          f"threads={torch.get_num_threads()} repeats={cfg.repeats}x{cfg.steps} steps")
    width = max(24, *(len(n) for n in results))
    print(f"{'model':{width}s} {'img/s':>9s} {'[min, max]':>20s} {'lat ms':>9s} {'peak MiB':>9s}"
          f" {'res MiB':>9s}  {'speed':>7s} {'paired [min, max]':>21s} {'memory':>7s}  (ratios vs baseline;"
          " paired = median of per-round ratios)")
    for name, r in results.items():
        bases = [results[b] for b in baseline.get(name, [])]
        line = _row(r, bases[0] if bases else None, width)
        print(line.rstrip())
        for base in bases[1:]:
            print(" " * (len(line) - len(_ratios(r, bases[0]))) + _ratios(r, base))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        record = {"args": {k: v for k, v in vars(args).items() if k != "func"},
                  "config": dataclasses.asdict(cfg),
                  "threads": torch.get_num_threads(), "torch": torch.__version__,
                  "machine": f"{platform.machine()} {os.cpu_count()} logical CPUs",
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "results": [dataclasses.asdict(r) for r in results.values()], "baselines": baseline,
                  "notes": notes}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return 0
