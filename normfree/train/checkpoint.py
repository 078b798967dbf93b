"""Checkpoints as one safetensors file (tensors) with JSON metadata inside: no pickle, atomic writes."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from torch import nn

from ..errors import CheckpointError

CHECKPOINT_FORMAT = 1
"""Version of the metadata layout; :func:`save_checkpoint` stamps it, :func:`load_checkpoint` checks it."""


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, fsync, then rename: a crash or Ctrl-C mid-write leaves
    the previous checkpoint intact. Non-finite weights are refused so a diverged run never replaces a
    good checkpoint."""
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"refusing to write checkpoint {path}: non-finite values in {bad[:3]}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp,
                  metadata={"normfree": json.dumps({**meta, "format": CHECKPOINT_FORMAT})})
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata; a missing or unreadable file, or one written in another
    :data:`CHECKPOINT_FORMAT`, raises a one-paragraph ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("normfree", "null"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path} is a safetensors file but not a normfree checkpoint (no metadata)")
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} has checkpoint format {meta.get('format')!r}; this normfree reads "
                              f"format {CHECKPOINT_FORMAT} only")
    return tensors, meta


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
        state = load_file(str(path))
        if any(k.startswith("model.") for k in state) and not any(k in model.state_dict() for k in state):
            state = split_prefix(load_checkpoint(path)[0], "model")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit the model: {err}") from None
