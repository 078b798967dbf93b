"""Strict state-dict loading shared by the checkpoint converters."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, ModelOptionError
from ..registry import create_model


def resolve_model(model_or_name: nn.Module | str, **model_kwargs: object) -> nn.Module:
    """A registered model name is built (with ``model_kwargs``); a module is used as given."""
    if isinstance(model_or_name, str):
        return create_model(model_or_name, **model_kwargs)
    if model_kwargs:
        raise ModelOptionError("model keyword arguments only apply when a model name is given")
    return model_or_name


def _listing(label: str, keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit]) + (f", … ({len(keys) - limit} more)" if len(keys) > limit else "")
    return f"{len(keys)} {label}: {shown}"


def load_strict(model: nn.Module, tensors: Mapping[str, torch.Tensor], *, source: str,
                unexpected: list[str] | None = None) -> nn.Module:
    """Copy ``tensors`` (keyed like ``model.state_dict()``) into ``model``, refusing any mismatch.

    Every model tensor must be supplied with the right shape, and nothing may be left over
    (``unexpected`` lists source keys the caller could not map); all problems are reported in one
    ``CheckpointError`` so a wrong model choice is obvious at once.
    """
    own = model.state_dict()
    missing = sorted(k for k in own if k not in tensors)
    extra = sorted(k for k in tensors if k not in own) + sorted(unexpected or [])
    shapes = [f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in tensors.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    problems = [_listing(label, keys) for label, keys in
                (("missing", missing), ("unexpected", extra), ("shape mismatches", shapes)) if keys]
    if problems:
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{source} weights do not fit {name}: " + "; ".join(problems))
    with torch.no_grad():
        for k, v in tensors.items():
            own[k].copy_(v.to(own[k].dtype))
    return model
