"""Load official DeepMind (JAX/Haiku) NF-ResNet / NF-RegNet / NFNet parameters.

Haiku names a parameter ``module/~/submodule/param``, e.g. ``NFNet/~/nf_block_3/~/conv1b/w``; conv
kernels are HWIO and linear weights [in, out]. Blocks are numbered in creation order (``nf_block``,
``nf_block_1``, …; NF-ResNet: ``nf_res_block``), the SE linears are ``squeeze_excite/~/linear`` and
``linear_1``, the classifier is ``linear``. The root module name (``NFNet``, ``NF_RegNet``,
``NF_ResNet`` or whatever the user called it) is ignored. The official release files
(``F0_haiku.npz`` …) are pickles of the nested dict despite their suffix: they need ``allow_pickle``,
and are read with :class:`normfree.safeio.RestrictedUnpickler`, which builds only containers and numpy
arrays, so a crafted file cannot run code.
The NF-ResNet naming also serves the 32×32 ``nf_cifar_*`` models (no official counterpart).
"""
from __future__ import annotations

import os
import zipfile
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ModelSpecError
from ..layers import ScaledStdConv2d
from ..registry import get_entry
from ..safeio import one_line, restricted_load
from .common import load_strict, resolve_model

_FAMILIES = {"nf_resnet": "nf_res_block", "nf_cifar": "nf_res_block", "nf_regnet": "nf_block",
             "nfnet": "nf_block"}
"""Registry family → Haiku block module name."""


def _flatten(params: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in params.items():
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            yield from _flatten(value, name)
        else:
            yield name, value


def read_params(params: Mapping[str, Any] | str | os.PathLike,
                allow_pickle: bool = False) -> dict[str, np.ndarray]:
    """Flat ``{"module/…/param": array}`` from a (nested) mapping or a file, root module stripped.

    Files: an ``.npz`` archive of the flat form; a pickled Haiku params dict only with
    ``allow_pickle=True`` (restricted unpickling: containers and numpy arrays, never code). ``/~/``
    separators become ``/``; the first path component (the network's root module) is dropped, so
    weights saved under any root name load.
    """
    if isinstance(params, (str, os.PathLike)):
        if not os.path.isfile(params):
            raise CheckpointError(f"DeepMind parameters {os.fspath(params)} do not exist")
        if zipfile.is_zipfile(params):
            try:
                with np.load(params, allow_pickle=False) as data:
                    flat = {k: data[k] for k in data.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise CheckpointError(f"cannot read {os.fspath(params)}: {one_line(err)}") from None
        elif allow_pickle:
            with open(params, "rb") as fh:
                tree = restricted_load(fh, params)
            if not isinstance(tree, Mapping):
                raise CheckpointError(f"{os.fspath(params)} holds a {type(tree).__name__}, not a Haiku "
                                      "params mapping")
            return read_params(tree)
        else:
            raise CheckpointError(f"{os.fspath(params)} is not an .npz archive; if it is a pickled Haiku "
                                  "params dict (the official release format), pass allow_pickle=True "
                                  "(CLI: --allow-pickle)")
    else:
        flat = dict(_flatten(params))
    out: dict[str, np.ndarray] = {}
    roots = set()
    for key, value in flat.items():
        parts = [p for p in key.replace("/~/", "/").split("/") if p]
        if len(parts) < 2:
            raise CheckpointError(f"parameter key {key!r} is not of the form 'module/…/param'")
        roots.add(parts[0])
        array = np.asarray(value)
        if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
            raise CheckpointError(f"parameter {key!r} is not a numeric array (dtype {array.dtype})")
        out["/".join(parts[1:])] = array
    if len(roots) > 1:
        raise CheckpointError(f"parameters come from several root modules {sorted(roots)}; pass one network")
    return out


def _conv(prefix: str, key: str) -> dict[str, tuple[str, str]]:
    return {f"{prefix}/w": (f"{key}.weight", "hwio"), f"{prefix}/gain": (f"{key}.gain", ""),
            f"{prefix}/bias": (f"{key}.bias", "")}


def _linear(prefix: str, key: str) -> dict[str, tuple[str, str]]:
    return {f"{prefix}/w": (f"{key}.weight", "io"), f"{prefix}/b": (f"{key}.bias", "")}


def haiku_names(model: nn.Module) -> dict[str, tuple[str, str]]:
    """Haiku key → (our state-dict key, layout) for a normalizer-free model built by this library."""
    name = getattr(model, "model_name", None)
    family = get_entry(name).family if name else ""
    if family not in _FAMILIES:
        raise ModelSpecError(f"no DeepMind layout for model {getattr(model, 'model_name', '?')!r} "
                         f"(family {family!r}); supported families: {sorted(_FAMILIES)}")
    names: dict[str, tuple[str, str]] = {}
    for key, module in model.stem.named_children():
        if isinstance(module, ScaledStdConv2d):
            names.update(_conv("initial_conv" if key == "conv" else f"stem_{key}", f"stem.{key}"))
    block_name = _FAMILIES[family]
    for i, (path, block) in enumerate(
            (f"stages.{s}.{b}", blk) for s, stage in enumerate(model.stages)
            for b, blk in enumerate(stage)):
        hk_block = block_name if i == 0 else f"{block_name}_{i}"
        for key, module in block.branch.named_children():
            if isinstance(module, ScaledStdConv2d):
                names.update(_conv(f"{hk_block}/{key}", f"{path}.branch.{key}"))
            elif key == "se":
                names.update(_linear(f"{hk_block}/squeeze_excite/linear", f"{path}.branch.se.fc0"))
                names.update(_linear(f"{hk_block}/squeeze_excite/linear_1", f"{path}.branch.se.fc1"))
        if block.shortcut is not None:
            sc = "shortcut" if isinstance(block.shortcut, ScaledStdConv2d) else "shortcut.conv"
            names.update(_conv(f"{hk_block}/conv_shortcut", f"{path}.{sc}"))
        names[f"{hk_block}/skip_gain"] = (f"{path}.skip_gain", "")
    if isinstance(model.final, nn.Sequential) and hasattr(model.final, "conv"):
        names.update(_conv("final_conv", "final.conv"))
    names.update(_linear("linear", "fc"))
    return names


def _to_torch(value: np.ndarray, layout: str) -> torch.Tensor:
    t = torch.from_numpy(np.array(value, dtype=np.float32))  # copy; keeps 0-d scalars 0-d
    if layout == "hwio" and t.ndim == 4:
        t = t.permute(3, 2, 0, 1)
    elif layout == "io" and t.ndim == 2:
        t = t.t()
    return t.contiguous()


def from_deepmind(model_or_name: nn.Module | str, params: Mapping[str, Any] | str | os.PathLike,
                  *, allow_pickle: bool = False, **model_kwargs: Any) -> nn.Module:
    """Our model carrying official Haiku parameters (strict: any missing/extra/misshapen key errors).

    Args:
        model_or_name: a registered name such as ``"nfnet_f0"`` (built with ``model_kwargs``, e.g.
            ``num_classes``) or a model from :func:`normfree.create_model`.
        params: ``{"NFNet/~/stem_conv0": {"w": …}}``-style nested mapping, a flat mapping keyed
            ``"NFNet/~/stem_conv0/w"``, or the path of an ``.npz`` holding the flat form.
        allow_pickle: also accept a pickled params file (see :func:`read_params`).

    Example::

        model = from_deepmind("nfnet_f0", "F0_haiku.npz")   # then model.eval()
    """
    model = resolve_model(model_or_name, **model_kwargs)
    flat = read_params(params, allow_pickle)
    names = haiku_names(model)
    tensors = {names[k][0]: _to_torch(v, names[k][1]) for k, v in flat.items() if k in names}
    unexpected = [k for k in flat if k not in names]
    return load_strict(model, tensors, source="DeepMind", unexpected=unexpected)
