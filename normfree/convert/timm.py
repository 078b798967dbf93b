"""timm ``NormFreeNet`` checkpoints in and out: ``dm_nfnet_f0``–``f6``, ``nfnet_l0``, ``nf_resnet26``,
``nf_resnet50`` and ``nf_regnet_b1`` (:func:`from_timm`, :func:`to_timm`).

timm's structure differs from the official one in ways that change the numbers, so each timm name maps
to one of our models with explicit compatibility options rather than to the official defaults:

* all: ``ws="timm"`` (WS as ``(W − mean)/sqrt(var + 1e-5)``), stochastic depth rescaled by 1/keep;
* ``dm_nfnet_*``: γ in the activations (``gamma_in_act``), exact-erf GELU, TF-'SAME' padding, scalar
  skip gains (``skipinit_gain``);
* ``nf_resnet26`` / ``nf_resnet50`` / ``nf_regnet_b1`` / ``nfnet_l0``: γ folded into every conv,
  symmetric padding, average-pool shortcut (the ResNets only need the option: it is the NF-RegNet and
  NFNet default), channels rounded to multiples of 8 (``nf_regnet_b1``), and no skip gain: timm
  zero-initializes the last conv's gain instead, so our scalar skip gains are set to exactly 1.
  ``nfnet_l0`` is our NFNet-F0 with SiLU, bottleneck ×0.25 in groups of 64, SE ×0.25 and a final conv
  of 1.5× the last width.
* refused with the reason: ``eca_nfnet_l*`` and ``nf_ecaresnet*`` (ECA attention, a 1-D conv across
  channels, which our blocks do not build). timm's other NF names are not mapped (no parity test here).

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
                    {"input_size": (3, 256, 256), "test_input_size": (3, 288, 288), "crop_pct": 0.94,
                     "crop_mode": "center"}),
    "nf_resnet26": ("nf_resnet26", {**_TIMM_ALL, "padding": "symmetric", "shortcut": "avgpool_conv",
                                    "skipinit_gain": 1.0},
                    {"crop_pct": 0.9, "crop_mode": "center"}),
    "nf_regnet_b1": ("nf_regnet_b1", {**_TIMM_ALL, "padding": "symmetric", "channel_divisor": 8,
                                      "fc_init_std": 0.01},
                     {"input_size": (3, 256, 256), "test_input_size": (3, 288, 288), "crop_pct": 0.9,
                      "crop_mode": "center"}),
    "nfnet_l0": ("nfnet_f0", {**_TIMM_ALL, "padding": "symmetric", "activation": "silu", "expansion": 0.25,
                              "group_width": 64, "se_ratio": 0.25, "final_conv_mult": 1.5,
                              "skipinit_gain": 1.0},
                 {"input_size": (3, 224, 224), "test_input_size": (3, 288, 288), "crop_pct": 0.9,
                  "test_crop_pct": 1.0, "crop_mode": "center"}),
}
"""timm name → (our registered name, builder options for timm's structure, timm's ``pretrained_cfg``
entries that differ from ours)."""

_TIMM_SKIPINIT = {name for name in TIMM_MODELS if name.startswith("dm_nfnet_")}
"""timm models whose blocks have a scalar ``skipinit_gain``; the others have none (ours is 1 there)."""

_FUNCTION_OPTIONS = ("ws", "padding", "activation", "gamma_in_act", "shortcut", "stochdepth_scale")
"""Options that change the function timm's structure computes (sizes show up as shape mismatches)."""

_REFUSED = {"eca_nfnet_": "ECA attention (a 1-D conv across channels), which normfree's blocks do not build",
            "nf_ecaresnet": "ECA attention (a 1-D conv across channels), which normfree's blocks do not build"}

_BRANCH = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3"}


def timm_model(name: str, **model_kwargs: Any) -> nn.Module:
    """Our model with the structure of timm's ``name`` (untrained); ``pretrained_cfg`` as timm's."""
    _check_name(name)
    ours, options, evaluation = TIMM_MODELS[name]
    kwargs = {**options, **model_kwargs}
    model = create_model(ours, **kwargs)
    model.convert_kwargs = kwargs
    model.pretrained_cfg.update({"eval_policy": "timm", "interpolation": "bicubic", **evaluation})
    return model


def _check_name(name: str) -> None:
    if name in TIMM_MODELS:
        return
    why = next((f": timm's {name} uses {reason}" for prefix, reason in _REFUSED.items()
                if name.startswith(prefix)), "")
    raise ModelSpecError(f"no timm mapping for {name!r}{why}; supported: {', '.join(TIMM_MODELS)}")


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
        name: timm model name, a key of :data:`TIMM_MODELS`.

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


def to_timm(model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """A timm ``state_dict`` for timm's ``name`` carrying ``model``'s weights (the inverse of
    :func:`from_timm`): ``timm.create_model(name, ...).load_state_dict(to_timm(model, name))`` is strict.

    ``model`` must have timm's structure, i.e. come from :func:`timm_model` or :func:`from_timm` with the
    same ``name`` (other options change the function timm would compute). Where timm's blocks have no
    skip gain, ours is folded into the last conv's gain and bias, exact since nothing follows that conv;
    a block whose branch ends in SE (``nfnet_l0``) needs its skip gain at exactly 1.

    Example::

        import timm
        ref = timm.create_model("nf_resnet50", pretrained=False)
        ref.load_state_dict(to_timm(normfree_model, "nf_resnet50"))
    """
    _check_name(name)
    ours, options, _ = TIMM_MODELS[name]
    built = getattr(model, "convert_kwargs", None)
    wrong = ([k for k, v in options.items() if k in _FUNCTION_OPTIONS and built.get(k, v) != v]
             if built is not None and getattr(model, "model_name", None) == ours else None)
    if wrong is None or wrong:
        detail = f" (options {wrong} differ)" if wrong else ""
        raise ModelSpecError(f"to_timm({name!r}) needs a model with timm's structure{detail}: build it with "
                             f"normfree.convert.timm.timm_model({name!r}, ...) or from_timm")
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for theirs, path in timm_names(model).items():
        for param in ("weight", "gain", "bias"):
            value = own.get(f"{path}.{param}")
            if value is None:
                continue
            if param == "gain":
                value = value.reshape(-1, 1, 1, 1)
            elif param == "weight" and ".se." in path:
                value = value.reshape(*value.shape, 1, 1)
            out[f"{theirs}.{param}"] = value.detach().clone()
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            key, gain = f"stages.{s}.{b}", block.skip_gain.detach()
            if name in _TIMM_SKIPINIT:
                out[f"{key}.skipinit_gain"] = gain.clone()
            elif bool(gain != 1):
                last = list(block.branch._modules)[-1]
                if last not in _BRANCH:
                    raise ModelSpecError(f"{key}: timm's {name} has no skip gain and this branch ends in "
                                         f"{last!r}, so a skip gain of {gain.item():g} cannot be folded; "
                                         "it must be 1")
                for param in ("gain", "bias"):
                    out[f"{key}.{_BRANCH[last]}.{param}"] = out[f"{key}.{_BRANCH[last]}.{param}"] * gain
    return out
