"""Load timm ``NormFreeNet`` checkpoints: ``dm_nfnet_f0``–``f6``, ``nf_resnet50`` and ``nf_regnet_b1``.

timm's structure differs from the official one in ways that change the numbers, so each timm name maps
to one of our models with explicit compatibility options rather than to the official defaults:

* all: ``ws="timm"`` (WS as ``(W − mean)/sqrt(var + 1e-5)``), stochastic depth rescaled by 1/keep;
* ``dm_nfnet_*``: γ in the activations (``gamma_in_act``), exact-erf GELU, TF-'SAME' padding, scalar
  skip gains (``skipinit_gain``);
* ``nf_resnet50`` / ``nf_regnet_b1``: γ folded into every conv, symmetric padding, average-pool
  shortcut (``nf_resnet50`` only needs the option: it is the NF-RegNet default), channels rounded to
  multiples of 8 (``nf_regnet_b1``), and no skip gain: timm zero-initializes the last conv's gain
  instead, so our scalar skip gains are set to exactly 1.

Keys: ``stem.conv`` / ``stem.conv1``…``conv4``, ``stages.S.B.{conv1,conv2,conv2b,conv3}`` (our
``conv0,conv1,conv1b,conv2``), ``downsample.conv``, ``attn``/``attn_last.{fc1,fc2}`` (1×1 convs),
``final_conv``, ``head.fc``; conv gains are stored (out, 1, 1, 1).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from ..errors import ModelSpecError
from ..layers import ScaledStdConv2d
from ..registry import create_model
from .common import load_strict

_TIMM_ALL = {"ws": "timm", "stochdepth_scale": True}
_DM_NFNET_CROP = {0: 0.9, 1: 0.91, 2: 0.92, 3: 0.94, 4: 0.951, 5: 0.954, 6: 0.956}

TIMM_MODELS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    **{f"dm_nfnet_f{i}": (f"nfnet_f{i}",
                          {**_TIMM_ALL, "gamma_in_act": True, "activation": "gelu_exact"},
                          {"crop_pct": crop, "crop_mode": "squash"})
       for i, crop in _DM_NFNET_CROP.items()},
    "nf_resnet50": ("nf_resnet50", {**_TIMM_ALL, "padding": "symmetric", "shortcut": "avgpool_conv",
                                    "skipinit_gain": 1.0},
                    {"input_size": 288, "train_size": 256, "crop_pct": 0.94, "crop_mode": "center"}),
    "nf_regnet_b1": ("nf_regnet_b1", {**_TIMM_ALL, "padding": "symmetric", "channel_divisor": 8,
                                      "fc_init_std": 0.01},
                     {"input_size": 288, "train_size": 256, "crop_pct": 0.9, "crop_mode": "center"}),
}
"""timm name → (our registered name, builder options for timm's structure, timm eval settings)."""

_BRANCH = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3"}


def timm_model(name: str, **model_kwargs: Any) -> nn.Module:
    """Our model with the structure of timm's ``name`` (untrained); eval settings as timm's config."""
    if name not in TIMM_MODELS:
        raise ModelSpecError(f"no timm mapping for {name!r}; supported: {', '.join(TIMM_MODELS)}")
    ours, options, evaluation = TIMM_MODELS[name]
    kwargs = {**options, **model_kwargs}
    model = create_model(ours, **kwargs)
    model.convert_kwargs = kwargs
    size = evaluation.get("input_size", getattr(model, "test_size", model.input_size))
    model.input_size = size
    model.eval_settings = {"policy": "timm", "input_size": size, "interpolation": "bicubic",
                           "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
                           **{k: v for k, v in evaluation.items() if k not in ("input_size", "train_size")}}
    if "train_size" in evaluation:
        model.train_size = evaluation["train_size"]
    return model


def timm_names(model: nn.Module) -> dict[str, str]:
    """timm key prefix → our module path, for every parameterized module of ``model``."""
    names: dict[str, str] = {}
    stem_convs = [k for k, m in model.stem.named_children() if isinstance(m, ScaledStdConv2d)]
    for i, key in enumerate(stem_convs):
        names["stem.conv" if len(stem_convs) == 1 else f"stem.conv{i + 1}"] = f"stem.{key}"
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            ours, theirs = f"stages.{s}.{b}", f"stages.{s}.{b}"
            keys = list(block.branch._modules)
            for key in keys:
                if key in _BRANCH:
                    names[f"{theirs}.{_BRANCH[key]}"] = f"{ours}.branch.{key}"
                elif key == "se":  # timm: `attn` between convs (RegNet), `attn_last` after the last
                    attn = "attn_last" if keys.index("se") == len(keys) - 1 else "attn"
                    names[f"{theirs}.{attn}.fc1"] = f"{ours}.branch.se.fc0"
                    names[f"{theirs}.{attn}.fc2"] = f"{ours}.branch.se.fc1"
            if block.shortcut is not None:
                sc = "shortcut" if isinstance(block.shortcut, ScaledStdConv2d) else "shortcut.conv"
                names[f"{theirs}.downsample.conv"] = f"{ours}.{sc}"
    if isinstance(model.final, nn.Sequential) and hasattr(model.final, "conv"):
        names["final_conv"] = "final.conv"
    names["head.fc"] = "fc"
    return names


def from_timm(state_dict: Mapping[str, torch.Tensor], name: str, **model_kwargs: Any) -> nn.Module:
    """Our model (built with timm-compatibility options) carrying a timm checkpoint, strictly matched.

    Args:
        state_dict: timm ``model.state_dict()`` (e.g. loaded with ``safetensors.torch.load_file``).
        name: timm model name: ``dm_nfnet_f0`` … ``dm_nfnet_f6``, ``nf_resnet50`` or ``nf_regnet_b1``.

    Example::

        from safetensors.torch import load_file
        model = from_timm(load_file("dm_nfnet_f0.safetensors"), "dm_nfnet_f0").eval()
    """
    model = timm_model(name, **model_kwargs)
    prefixes = timm_names(model)
    blocks = {f"stages.{s}.{b}" for s, stage in enumerate(model.stages) for b in range(len(stage))}
    tensors: dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state_dict.items():
        prefix, _, param = key.rpartition(".")
        if prefix in prefixes and param in ("weight", "gain", "bias"):
            ours = f"{prefixes[prefix]}.{param}"
            if param == "gain":  # timm stores (out, 1, 1, 1)
                value = value.reshape(-1)
            elif param == "weight" and ".se." in ours:  # timm's SE uses 1×1 convs
                value = value.reshape(value.shape[0], -1)
            tensors[ours] = value
        elif param == "skipinit_gain" and prefix in blocks:
            tensors[f"{prefix}.skip_gain"] = value.reshape(())
        else:
            unexpected.append(key)
    if not any(k.endswith(".skipinit_gain") for k in state_dict):
        # timm's default blocks have no scalar gain (they zero-init conv3's gain): ours must be 1.
        tensors.update({f"{p}.skip_gain": torch.ones(()) for p in blocks})
    return load_strict(model, tensors, source="timm", unexpected=unexpected)
