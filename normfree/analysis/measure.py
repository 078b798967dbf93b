"""Signal-propagation runs of named models: build each ``NAME[:key=value,...]`` spec, optionally load
weights, measure on N(0, 1) inputs or real images, and write plot, JSON, CSV and diagnosis.

This is what ``normfree spp``, ``normfree demo`` and :func:`normfree.train.compare.compare` share.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ..errors import CheckpointError, ConfigError, DataError
from ..figures import data_label
from ..resources import check_batch_fits
from ..registry import create_model, get_entry, parse_model_spec
from ..init import autoinit
from ..train.checkpoint import load_weights
from ..train.init import parse_init
from .diagnose import diagnose
from .plot import plot_spp
from .spp import SPPResult, _input_channels, make_inputs, save_csv, save_json, signal_propagation


def load_images(spec: str, batch: int, size: int) -> torch.Tensor:
    """``batch`` test images of a data spec (``normfree train``'s grammar: npz:DIR, imagefolder:DIR, ...),
    evenly spaced through the split so that they span its classes, standardized per channel and resized
    to ``size``."""
    from ..train.data import load_data, step_generator

    with warnings.catch_warnings():  # an image folder without val/: its training images serve as well
        warnings.simplefilter("ignore")
        data = load_data(spec, "test", 0, size)
    if len(data) < 2:
        raise DataError(f"{data.name} has {len(data)} test image(s); SPP statistics need at least 2")
    idx = torch.linspace(0, len(data) - 1, min(batch, len(data))).round().long()
    x = data.batch(idx, False, step_generator(0))[0].float().permute(0, 3, 1, 2) / 255
    x = (x - x.mean(dim=(0, 2, 3), keepdim=True)) / x.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x


def _checkpoint_record(path: str, name: str) -> dict:
    """Model options and ``pretrained_cfg`` a checkpoint records ({} for a plain weight file), after
    checking that it holds ``name``."""
    from ..pretrained import checkpoint_info

    if not str(path).endswith(".safetensors") or not Path(path).is_file():
        return {}
    try:
        info = checkpoint_info(path)
    except CheckpointError:  # plain weights without metadata: load_weights reads them
        return {}
    if info["model"] != name:
        raise ConfigError(f"--checkpoint {path} holds a {info['model']}, not a {name}")
    return info


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
        record = _checkpoint_record(checkpoint, name) if checkpoint else {}
        kwargs = {**record.get("model_kwargs", {}), **kwargs}  # classes, channels, options as trained
        torch.manual_seed(seed)
        model = create_model(name, **kwargs)
        if record.get("pretrained_cfg"):
            model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **record["pretrained_cfg"]}
        if checkpoint:
            load_weights(model, checkpoint)
        elif parse_init("auto", name)[0] == "autoinit":  # data-free: measure as training starts
            autoinit(model)
        size = input_size or int(getattr(model, "input_size", 224))
        check_batch_fits(model, (batch, _input_channels(model) or 3, size, size), device, gradients)
        model.to(device)
        if data:
            x = load_images(data, batch, size).to(device)
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
