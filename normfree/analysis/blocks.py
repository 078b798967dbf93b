"""Find the residual blocks of a model, and the module whose output is each block's residual branch.

Three kinds are recognised: normfree :class:`~normfree.models.blocks.ResidualBlock` (branch end =
``block.branch``), torchvision/timm-style ``BasicBlock``/``Bottleneck`` modules (``conv1``, ``conv2``
[, ``conv3``] and a ``downsample`` attribute; branch end = the last ``bn``/``conv`` before the add), and
for anything else, modules named by shell patterns (``fnmatch`` on ``named_modules`` names).
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Sequence

from torch import nn

from ..errors import ModelSpecError
from ..models.blocks import ResidualBlock


@dataclass(frozen=True)
class Block:
    """A residual block to measure: its output is the signal; ``branch_end``'s output is the residual
    branch (None when unknown); ``transition`` marks blocks whose shortcut is a projection."""

    name: str
    module: nn.Module
    branch_end: nn.Module | None
    transition: bool


def _resnet_like_branch_end(module: nn.Module) -> nn.Module | None:
    """Last conv's norm (or the conv itself) of a torchvision/timm BasicBlock or Bottleneck."""
    if not (hasattr(module, "conv1") and hasattr(module, "conv2") and hasattr(module, "downsample")):
        return None
    last = "3" if isinstance(getattr(module, "conv3", None), nn.Module) else "2"
    bn = getattr(module, f"bn{last}", None)
    if isinstance(bn, nn.Module) and not isinstance(bn, nn.Identity):
        return bn
    return getattr(module, f"conv{last}")


def _describe(name: str, module: nn.Module, branch: str | None) -> Block:
    if isinstance(module, ResidualBlock):
        end: nn.Module | None = module.branch
        transition = module.is_transition
    else:
        end = _resnet_like_branch_end(module)
        transition = getattr(module, "downsample", None) is not None
    if branch is not None:
        try:
            end = module.get_submodule(branch)
        except AttributeError:
            raise ModelSpecError(f"block {name!r} has no submodule {branch!r} (the branch argument)") from None
    return Block(name, module, end, transition)


def find_blocks(model: nn.Module, patterns: Sequence[str] | str | None = None,
                branch: str | None = None) -> list[Block]:
    """The residual blocks of ``model`` in definition order.

    Args:
        patterns: shell patterns over module names (e.g. ``"layers.*"``) to pick blocks by hand; by
            default normfree and torchvision/timm-style ResNet blocks are found automatically. Modules
            inside a chosen block are never blocks themselves (``*`` also matches dots).
        branch: name of the submodule (relative to each block) whose output is the residual branch,
            for blocks where it cannot be found automatically.
    Raises ``ValueError`` when nothing is found, naming what was looked for.
    """
    if isinstance(patterns, str):
        patterns = [patterns]
    found: list[Block] = []
    inside: tuple[str, ...] = ()  # prefixes of blocks already taken: their submodules are never blocks
    for name, module in model.named_modules():
        if not name or (inside and name.startswith(inside)):
            continue
        if patterns:
            chosen = any(fnmatch.fnmatchcase(name, p) for p in patterns)
        else:
            chosen = isinstance(module, ResidualBlock) or _resnet_like_branch_end(module) is not None
        if chosen:
            found.append(_describe(name, module, branch))
            inside = (*inside, name + ".")
    if found:
        return found
    if patterns:
        raise ModelSpecError(f"no module name matches {list(patterns)}; module names look like "
                         f"{[n for n, _ in model.named_modules() if n][:8]}")
    raise ModelSpecError(f"no residual blocks found in {type(model).__name__}: expected normfree "
                     "ResidualBlocks or torchvision/timm-style blocks (conv1, conv2, downsample); "
                     "name the blocks with module-name patterns, e.g. blocks=['layers.*']")
