"""Signal-propagation runs of named models: build each ``NAME[:key=value,...]`` spec, optionally load
weights, measure on N(0, 1) inputs or real images, and write plot, JSON, CSV and diagnosis.

This is what ``normfree spp``, ``normfree demo`` and :func:`normfree.train.compare.compare` share.
"""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import ConfigError, DataError
from ..figures import data_label
from ..resources import check_batch_fits
from ..safeio import one_line
from ..registry import create_model, get_entry, parse_model_spec
from ..init import autoinit
from ..train.checkpoint import load_weights
from ..train.init import parse_init
from .diagnose import diagnose
from .plot import plot_spp
from .spp import SPPResult, _input_channels, make_inputs, save_csv, save_json, signal_propagation


def load_npz_images(path: str | Path, batch: int, size: int) -> torch.Tensor:
    """The first ``batch`` images of an .npz (``x``: uint8 N×H×W×C), standardized per channel and resized
    to ``size``. A directory means its ``test.npz`` (else its first .npz)."""
    path = Path(path)
    if path.is_dir():
        files = [path / "test.npz"] if (path / "test.npz").is_file() else sorted(path.glob("*.npz"))
        if not files:
            raise DataError(f"no .npz file in {path}")
        path = files[0]
    if not path.is_file():
        raise DataError(f"data {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as data:
            x = np.asarray(data["x"][:batch]) if "x" in data else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"cannot read {path} (truncated or not an .npz archive): {one_line(err)}") from None
    if x is None or x.dtype != np.uint8 or x.ndim != 4 or len(x) < 2:
        raise DataError(f"{path} needs an array 'x' of at least 2 uint8 images N×H×W×C, found "
                        + ("none" if x is None else f"{x.dtype} {x.shape}"))
    x = torch.from_numpy(x).float().permute(0, 3, 1, 2) / 255
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
        raise ConfigError(f"--checkpoint needs exactly one model, got {len(specs)} model specs")
    results = []
    for spec in tqdm(specs, desc="SPP", unit="model", leave=False):
        name, kwargs = parse_model_spec(spec)
        if skipinit_gain is not None and "skipinit_gain" in get_entry(name).options():
            kwargs.setdefault("skipinit_gain", skipinit_gain)
        torch.manual_seed(seed)
        model = create_model(name, **kwargs)
        if checkpoint:
            load_weights(model, checkpoint)
        elif parse_init("auto", name)[0] == "autoinit":  # data-free: measure as training starts
            autoinit(model)
        size = input_size or int(getattr(model, "input_size", 224))
        check_batch_fits(model, (batch, _input_channels(model) or 3, size, size), device, gradients)
        model.to(device)
        if data:
            x = load_npz_images(data, batch, size).to(device)
        else:
            x = make_inputs(model, batch=batch, size=size, seed=seed)
        result = signal_propagation(model, x, seed=seed, gradients=gradients)
        result.model = spec
        result.inputs = f"images from {data_label(data)}" if data else "N(0,1)"
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
