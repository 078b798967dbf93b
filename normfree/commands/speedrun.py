"""``normfree speedrun``: train a CIFAR-10 speedrun recipe (default: the normalizer-free one)."""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path
from typing import Any

from ..checks import NONNEGATIVE_INT, POSITIVE_INT, check_number, require_device
from ..errors import ConfigError
from ..registry import literal_or_word
from .options import add_batch_size, add_data, add_flag, add_out_dir


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``["agc_clip=0.04", "model_kwargs={'dirac': False}"]`` → a dict of Python values."""
    out: dict[str, Any] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise ConfigError(f"bad --set {item!r}; write KEY=VALUE, e.g. --set agc_clip=0.04")
        out[key.strip()] = literal_or_word(value)
    return out


def _run(args: argparse.Namespace) -> None:
    import torch

    from ..train.distributed import resolve_device
    from ..train.speedrun import RECIPES, get_recipe, load_cifar, train

    if args.list:
        for r in RECIPES.values():
            print(f"{r.name:12s} {r.model:20s} {r.description}")
        return
    if not args.data:
        raise ConfigError("--data is required (npz:DIR with train.npz/test.npz, or cifar10:DIR)")
    check_number("--seeds", args.seeds, POSITIVE_INT)
    for option in ("seed", "eval_every", "train_subset", "test_subset", "threads"):
        check_number("--" + option.replace("_", "-"), getattr(args, option), NONNEGATIVE_INT)
    recipe = get_recipe(args.recipe)
    changes = parse_settings(args.set)
    if args.epochs is not None:
        changes["epochs"] = args.epochs
    if args.batch_size is not None:
        changes["batch_size"] = args.batch_size
    recipe = recipe.replace(**changes)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(require_device("--device", args.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    data = load_cifar(args.data, device, args.train_subset, args.test_subset)
    print(f"speedrun {recipe.name} ({recipe.model}) on {device}: {len(data[0][1])} train / "
          f"{len(data[1][1])} test images, {recipe.epochs} epochs at batch {recipe.batch_size}")
    if device.type == "cuda" and args.cuda_warmup:
        # untimed throwaway steps, so that cuDNN autotuning is not in the first run's wall time
        (x, y), (xt, yt) = data
        steps = min(10, len(y) // recipe.batch_size)
        train(recipe.replace(epochs=steps / max(len(y) // recipe.batch_size, 1)), ((x, y), (xt[:2000], yt[:2000])),
              args.seed, device, log=lambda s: None)
    rows = []
    for seed in range(args.seed, args.seed + args.seeds):
        out = Path(args.out_dir) / f"s{seed}" if args.out_dir else None
        if out is not None and (out / "result.json").is_file() and not args.rerun:
            saved = json.loads((out / "result.json").read_text())
            if saved.get("settings") != json.loads(json.dumps(dataclasses.asdict(recipe))):
                raise ConfigError(f"{out} holds a result of other settings; use another --out-dir or --rerun")
            row = {k: v for k, v in saved.items() if k != "settings"}
            print(f"seed {seed}: finished earlier ({out / 'result.json'})")
        else:
            if out is not None and args.rerun:  # from scratch: neither the result nor the checkpoint is kept
                (out / "result.json").unlink(missing_ok=True)
                (out / "checkpoint.safetensors").unlink(missing_ok=True)
            row = train(recipe, data, seed, device, out, eval_every=args.eval_every,
                        log=lambda s, seed=seed: print(f"[seed {seed}] {s}", flush=True))
        rows.append(row)
        print(f"seed {seed}: top1 {row['top1']:.2f}  top1_tta {row['top1_tta']:.2f}  wall {row['wall_s']:.2f}s"
              f"  device {row['device']}  train {row['train_pflop']:.4f} PFLOP"
              f" ({row['train_images_seen']} images x {row['macs_per_image']} MACs x 6)", flush=True)
    if len(rows) > 1:
        for key in ("top1", "top1_tta", "wall_s"):
            vals = [r[key] for r in rows]
            print(f"{key}: {statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f} over {len(vals)} seeds")


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..train.speedrun import RECIPES

    p = sub.add_parser("speedrun", help="train a CIFAR-10 speedrun recipe (airbench94-style)",
                       description="Train a speedrun recipe on CIFAR-10 and print test accuracy with and "
                                   "without TTA, wall time, device and training FLOPs. See docs/speedrun.md.")
    p.add_argument("--recipe", default="nf_speedrun", choices=list(RECIPES), help="(default: nf_speedrun)")
    add_data(p, "CIFAR-10 (npz:DIR with train.npz/test.npz, or cifar10:DIR)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds; prints mean ± std (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default: 0)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    add_out_dir(p, "per-seed checkpoints (resumed after an interruption) and result.json (a finished seed "
                   "is not rerun)")
    add_flag(p, "--rerun", help="train seeds again even if --out-dir has their result")
    p.add_argument("--epochs", type=float, help="override the recipe's epochs")
    add_batch_size(p, None, "override the recipe's batch size")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any recipe setting, e.g. --set agc_clip=0.04 (repeatable)")
    p.add_argument("--eval-every", type=int, default=0, help="also print test top-1 every N epochs (untimed)")
    p.add_argument("--train-subset", type=int, default=0, help="use only the first N training images")
    p.add_argument("--test-subset", type=int, default=0, help="use only the first N test images")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default: torch's choice)")
    add_flag(p, "--cuda-warmup", True, "CUDA: untimed warm-up steps before the timed runs (default: on)",
             old="--no-warmup")
    add_flag(p, "--list", help="list the recipes and exit")
    p.set_defaults(func=_run)
