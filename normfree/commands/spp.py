"""``normfree spp MODEL [MODEL ...] --out DIR``: signal-propagation plots, numbers and a diagnosis."""
from __future__ import annotations

import argparse
import ast
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..analysis import SPPResult, diagnose, plot_spp, save_csv, save_json, signal_propagation
from ..analysis.spp import make_inputs
from ..errors import NormfreeError
from ..init import autoinit
from ..registry import create_model, get_entry
from ..train.init import parse_init


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"nf_resnet50:std_conv=False,width=1"`` → ``("nf_resnet50", {"std_conv": False, "width": 1})``."""
    name, _, opts = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise NormfreeError(f"bad model option {item!r} in {spec!r}; write NAME:key=value,key=value")
        try:
            kwargs[key.strip()] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            kwargs[key.strip()] = value.strip()  # a bare word, e.g. activation=silu
    return name, kwargs


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load a ``normfree train`` checkpoint (its raw model weights), any other safetensors file, or a
    torch state dict (optionally under a "state_dict"/"model" key)."""
    path = Path(path)
    if not path.is_file():
        raise NormfreeError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        from ..train.checkpoint import load_checkpoint as load_train_checkpoint, split_prefix

        state = load_file(str(path))
        if any(k.startswith("model.") for k in state) and not any(k in model.state_dict() for k in state):
            state = split_prefix(load_train_checkpoint(path)[0], "model")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise NormfreeError(f"checkpoint {path} does not fit the model: {err}") from None


def load_npz_images(path: str | Path, batch: int, size: int) -> torch.Tensor:
    """The first ``batch`` images of an .npz (``x``: uint8 N×H×W×C), standardized per channel and resized
    to ``size``. A directory means its ``test.npz`` (else its first .npz)."""
    path = Path(path)
    if path.is_dir():
        files = [path / "test.npz"] if (path / "test.npz").is_file() else sorted(path.glob("*.npz"))
        if not files:
            raise NormfreeError(f"no .npz file in {path}")
        path = files[0]
    if not path.is_file():
        raise NormfreeError(f"data {path} does not exist")
    with np.load(path) as data:
        if "x" not in data:
            raise NormfreeError(f"{path} has no array 'x' (expected uint8 images N×H×W×C)")
        x = torch.from_numpy(np.asarray(data["x"][:batch])).float().permute(0, 3, 1, 2) / 255
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def measure(specs: Sequence[str], *, batch: int = 16, input_size: int | None = None,
            skipinit_gain: float | None = None, checkpoint: str | None = None, data: str | None = None,
            gradients: bool = False, seed: int = 0, device: str = "cpu") -> list[SPPResult]:
    """Build each model spec (``NAME[:key=value,...]``), measure its SPP; results are labelled by spec.

    ``autoinit_*`` nets are measured after AutoInit, which training applies before the first step; the
    data-dependent GradInit (``gradinit_*``) is not applied here (see benchmarks/baselines_cifar10/spp_init.py).
    """
    if checkpoint and len(specs) != 1:
        raise NormfreeError("--checkpoint needs exactly one model")
    results = []
    for spec in tqdm(specs, desc="SPP", unit="model", leave=False):
        name, kwargs = parse_spec(spec)
        if skipinit_gain is not None and "skipinit_gain" in get_entry(name).options():
            kwargs.setdefault("skipinit_gain", skipinit_gain)
        torch.manual_seed(seed)
        model = create_model(name, **kwargs)
        if checkpoint:
            load_checkpoint(model, checkpoint)
        elif parse_init("auto", name)[0] == "autoinit":  # data-free: measure as training starts
            autoinit(model)
        model.to(device)
        size = input_size or int(getattr(model, "input_size", 224))
        if data:
            x = load_npz_images(data, batch, size).to(device)
        else:
            x = make_inputs(model, batch=batch, size=size, seed=seed)
        result = signal_propagation(model, x, seed=seed, gradients=gradients)
        result.model = spec
        results.append(result)
    return results


def write(results: Sequence[SPPResult], out: str | Path, title: str | None = None) -> list[Path]:
    """spp.png, spp.json and spp.csv in ``out``; prints the diagnosis."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_spp(results, out / "spp.png", title=title), out / "spp.json", out / "spp.csv"]
    save_json(results, paths[1])
    save_csv(results, paths[2])
    print(diagnose(results))
    print("wrote " + ", ".join(map(str, paths)))
    return paths


def _run(args: argparse.Namespace) -> None:
    if args.batch < 2:
        raise NormfreeError(f"--batch {args.batch}: SPP statistics need a batch of at least 2")
    results = measure(args.models, batch=args.batch, input_size=args.input_size,
                      skipinit_gain=args.skipinit_gain, checkpoint=args.checkpoint, data=args.data,
                      gradients=args.grads, seed=args.seed, device=args.device)
    source = f"images from {args.data}" if args.data else "N(0,1) inputs"
    write(results, args.out, title=f"signal propagation, {source}, batch {args.batch}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("spp", help="signal-propagation plots: PNG, JSON, CSV and a diagnosis",
                       description="Measure signal-propagation plots (Brock et al. 2021) of one or more "
                                   "models at initialization (or from a checkpoint) and diagnose them. "
                                   "MODEL is a registered name, optionally with options: "
                                   "nf_resnet50:std_conv=False,width=1")
    p.add_argument("models", nargs="+", metavar="MODEL")
    p.add_argument("--out", required=True, help="output folder (created)")
    p.add_argument("--input-size", type=int, help="image size (default: each model's own)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--skipinit-gain", type=float,
                   help="initial skip gain for models that have one; 1 shows the paper's curves")
    p.add_argument("--checkpoint", help="safetensors or torch state-dict file (one model only)")
    p.add_argument("--data", help=".npz file or folder (x: uint8 NxHxWxC) instead of N(0,1) inputs")
    p.add_argument("--grads", action="store_true", help="also measure gradients (CE on random labels)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.set_defaults(func=_run)
