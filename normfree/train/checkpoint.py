"""Checkpoints as one safetensors file (tensors) with JSON metadata inside: no pickle, atomic writes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..safeio import atomic_write, one_line, read_safetensors, torch_load

TRAIN_META_KEYS = ("model", "num_classes", "in_chans", "mean", "std", "step", "config")
"""Metadata every ``normfree train`` checkpoint carries."""

CHECKPOINT_FORMAT = 1
"""Version of the metadata layout; :func:`save_checkpoint` stamps it, :func:`load_checkpoint` checks it."""


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write atomically (temp file, fsync, rename): a crash or Ctrl-C mid-write leaves the previous
    checkpoint intact. Non-finite weights are refused so a diverged run never replaces a good checkpoint."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write checkpoint {path}: non-finite values in {bad[:3]}")
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {**meta, "format": CHECKPOINT_FORMAT}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"normfree": json.dumps(meta)}))


def load_checkpoint(path: str | Path, require: tuple[str, ...] = ()) -> tuple[dict[str, torch.Tensor],
                                                                             dict[str, Any]]:
    """Tensors and metadata of a normfree checkpoint; anything else raises a one-line ``CheckpointError``
    (missing, truncated, not safetensors, no normfree metadata, metadata without the ``require`` keys,
    e.g. :data:`TRAIN_META_KEYS` for a checkpoint of ``normfree train``)."""
    tensors, metadata = read_safetensors(path)
    return tensors, checkpoint_meta(path, metadata, require)


def checkpoint_meta(path: str | Path, metadata: dict[str, str], require: tuple[str, ...] = ()) -> dict[str, Any]:
    """The checked normfree metadata of a safetensors file's raw ``metadata`` (see :func:`load_checkpoint`)."""
    try:
        meta = json.loads(metadata.get("normfree", "null"))
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is a safetensors file but not a normfree train checkpoint (no "
                              "'normfree' metadata); normfree spp --checkpoint reads plain weight files")
    missing = [k for k in require if k not in meta]
    if missing or not isinstance(meta.get("config", {}), dict):
        raise CheckpointError(f"{path} has normfree metadata without {missing or ['config']}: it was not "
                              "written by normfree train or is damaged")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {meta.get('format')!r}; this normfree reads "
                              f"format {CHECKPOINT_FORMAT} only")
    return meta


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors stored under ``prefix.`` with the prefix removed."""
    n = len(prefix) + 1
    return {k[n:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load model weights from a ``normfree train`` checkpoint (its raw weights), any other safetensors
    file, or a torch state dict (optionally under a "state_dict"/"model" key; ``module.`` prefixes of
    DDP are dropped). A file that does not fit the model raises ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        state = read_safetensors(path)[0]
        if any(k.startswith("model.") for k in state) and not any(k in model.state_dict() for k in state):
            state = split_prefix(load_checkpoint(path)[0], "model")
    else:
        state = torch_load(path)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {one_line(err)[:300]}") from None
