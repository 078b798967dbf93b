"""The network shell shared by every family: stem → residual stages → head."""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class ResNet(nn.Module):
    """Stem, stages of residual blocks, then ``final`` (activation, or final conv + activation),
    global average pool, dropout and a linear classifier.

    Attributes: ``stem``, ``stages`` (``nn.Sequential`` of ``nn.Sequential`` of blocks), ``final``,
    ``fc``, ``expected_var`` (predicted signal variance after each block with unit skip gains; None for
    normalized nets), ``input_size`` (default square resolution), ``num_features``.
    """

    def __init__(self, stem: nn.Module, stages: nn.Sequential, final: nn.Module, num_features: int,
                 num_classes: int = 1000, drop_rate: float = 0.0, fc_init_std: float = 0.01,
                 expected_var: list[float] | None = None, input_size: int = 224) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if not 0.0 <= drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.stem = stem
        self.stages = stages
        self.final = final
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)
        if fc_init_std > 0:
            nn.init.normal_(self.fc.weight, 0.0, fc_init_std)
        else:
            nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        self.num_features = num_features
        self.num_classes = num_classes
        self.drop_rate = drop_rate
        self.expected_var = expected_var
        self.input_size = input_size
        self.grad_checkpointing = False

    def blocks(self) -> list[nn.Module]:
        """All residual blocks in forward order."""
        return [b for stage in self.stages for b in stage]

    def set_grad_checkpointing(self, enable: bool = True) -> "ResNet":
        """Recompute each residual block in backward instead of storing its activations.

        Peak training memory then holds one tensor per block plus one block's internals, at the cost of
        a second forward of every block. Random layers replay the same draws (RNG state is restored), so
        gradients are unchanged.
        """
        self.grad_checkpointing = enable
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Spatial features after the final activation (before pooling)."""
        x = self.stem(_check_input(x))
        if self._checkpointing():
            for stage_out in self._stage_outputs(x):  # keep only the current stage's output alive
                x = stage_out
        else:
            x = self.stages(x)
        return self.final(x)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Feature maps for dense prediction (detection/segmentation backbones), as :attr:`feature_info`:
        the stem's output, every stage's output, the last one after ``final`` (so it equals
        :meth:`forward_features`).

        In these pre-activation networks a stage's output is the un-activated residual stream, whose
        variance grows along the stage (1 + k·α² for NF nets): a decoder should normalize or activate it.
        """
        x = self.stem(_check_input(x))
        feats = [x, *self._stage_outputs(x)]
        feats[-1] = self.final(feats[-1])
        return feats

    @property
    def feature_info(self) -> list[dict[str, int | str]]:
        """``num_chs``, ``reduction`` (input stride) and ``module`` of each :meth:`forward_intermediates` map."""
        reduction = math.prod(_stride(m) for m in self.stem.modules())
        info: list[dict[str, int | str]] = [
            {"num_chs": self.stages[0][0].in_ch, "reduction": reduction, "module": "stem"}]
        for i, stage in enumerate(self.stages):
            reduction *= math.prod(b.stride for b in stage)
            last = i == len(self.stages) - 1
            info.append({"num_chs": self.num_features if last else stage[-1].out_ch, "reduction": reduction,
                         "module": "final" if last else f"stages.{i}"})
        return info

    def _checkpointing(self) -> bool:
        return self.grad_checkpointing and torch.is_grad_enabled()

    def _stage_outputs(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Run the stages, yielding each output; blocks one by one under checkpointing, else each stage
        as a module (so hooks on a stage fire)."""
        ckpt = self._checkpointing()
        for stage in self.stages:
            if ckpt:
                for block in stage:
                    x = checkpoint(block, x, use_reentrant=False)
            else:
                x = stage(x)
            yield x

    def fuse(self) -> "ResNet":
        """Deploy form: same as ``normfree.deploy(self)`` (a frozen eval copy; ``self`` is untouched)."""
        from ..deploy import deploy  # deploy imports this module

        return deploy(self)  # type: ignore[return-value]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_features(x).mean(dim=(2, 3))
        return self.fc(self.drop(pooled))


def _check_input(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW batch, got a tensor of shape {tuple(x.shape)}")
    return x


def _stride(m: nn.Module) -> int:
    """A module's spatial stride (square strides only: every stem here), 1 for stride-less modules."""
    stride = getattr(m, "stride", 1)
    return stride[0] if isinstance(stride, tuple) else stride


def named_seq(**modules: nn.Module) -> nn.Sequential:
    """``nn.Sequential`` with readable child names (they become state-dict keys)."""
    return nn.Sequential(OrderedDict(modules))
