"""The SPP statistics of one tensor (official ``base.signal_metrics`` definitions)."""
from __future__ import annotations

import torch

from ..errors import ModelSpecError


def channel_stats(x: torch.Tensor) -> tuple[float, float]:
    """(average channel squared mean, average channel biased variance), channels on dim 1."""
    dims = [0, *range(2, x.ndim)]
    var, mean = torch.var_mean(x.detach().float(), dim=dims, correction=0)
    return (mean**2).mean().item(), var.mean().item()


def first_tensor(out: object) -> torch.Tensor:
    """The tensor a module returned, or the first of a tuple/list (blocks that also return extras)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise ModelSpecError(f"got {type(out).__name__} from a module; expected a tensor or a tuple/list "
                     "starting with one")
