"""The network shell shared by every family: stem → residual stages → head."""
from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..deploy import deploy
from ..errors import ModelSpecError
from ..layers import GammaAct
from .fold import clear_factor


NO_DECAY_NAMES = ("gain", "bias", "skip_gain")


def decay_exempt(name: str, param: torch.Tensor) -> bool:
    """Gains, biases, skip gains and other ≤1-D (after squeeze) parameters get no weight decay,
    as the official ``_make_opt`` (names containing 'gain'/'bias', scale/offset/b)."""
    leaf = name.rsplit(".", 1)[-1]
    return sum(s > 1 for s in param.shape) <= 1 or any(k in leaf for k in NO_DECAY_NAMES)


def init_classifier(fc: nn.Linear, std: float) -> None:
    """The families' classifier init: weights normal with ``std`` (zeros when ``std`` is 0), bias zero."""
    if std > 0:
        nn.init.normal_(fc.weight, 0.0, std)
    else:
        nn.init.zeros_(fc.weight)
    if fc.bias is not None:
        nn.init.zeros_(fc.bias)


class FeatureInfo(list):
    """A list of ``{"num_chs", "reduction", "module"}`` dicts, one per feature map, with timm's
    accessors."""

    def channels(self) -> list[int]:
        return [int(f["num_chs"]) for f in self]

    def reduction(self) -> list[int]:
        return [int(f["reduction"]) for f in self]

    def module_name(self) -> list[str]:
        return [str(f["module"]) for f in self]


class ResidualNetwork(nn.Module):
    """Stem, stages of residual blocks, then ``final`` (activation, or final conv + activation),
    global average pool, dropout and a linear classifier ``fc`` (``nn.Identity`` with 0 classes).

    Every family (NF-ResNet, NF-RegNet, NFNet, the normalized baselines) is this class; only the stem,
    the blocks and ``final`` differ. Attributes: ``stem``, ``stages`` (``nn.Sequential`` of
    ``nn.Sequential`` of blocks), ``final``, ``fc``, ``expected_var`` (predicted signal variance after
    each block with unit skip gains; None for normalized nets), ``num_features``, ``pretrained_cfg``
    (resolutions, crop and normalization the model is meant to be trained and evaluated with; see
    :func:`~normfree.models.variants.pretrained_cfg`), ``extra_init`` (an initialization run after
    the layers' own, e.g. Fixup's; :meth:`init_weights` repeats it).
    """

    def __init__(self, stem: nn.Module, stages: nn.Sequential, final: nn.Module, num_features: int,
                 num_classes: int = 1000, drop_rate: float = 0.0, fc_init_std: float = 0.01,
                 expected_var: list[float] | None = None, pretrained_cfg: dict[str, Any] | None = None,
                 extra_init: Callable[[ResidualNetwork], None] | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        if not 0.0 <= drop_rate < 1.0:
            raise ModelSpecError(f"drop_rate must be in [0, 1), got {drop_rate}")
        self.stem = stem
        self.stages = stages
        self.final = final
        self.drop = nn.Dropout(drop_rate)
        self.num_features = num_features
        self.drop_rate = drop_rate
        self.fc_init_std = fc_init_std
        self.expected_var = expected_var
        self.pretrained_cfg: dict[str, Any] = dict(pretrained_cfg or {})
        self.grad_checkpointing = False
        self.extra_init = extra_init
        self.reset_classifier(num_classes, device=device, dtype=dtype)
        if extra_init is not None:
            extra_init(self)

    def init_weights(self) -> ResidualNetwork:
        """Re-initialize every parameter exactly as construction did: each layer's
        ``reset_parameters()`` in construction order, the classifier's init (also for an ``nn.Linear``
        the user put in place of ``fc``), then the family's ``extra_init`` (Fixup's). Under the same
        seed this gives the weights of a fresh build, and it materializes a network built on the
        ``meta`` device after ``to_empty()``."""
        for m in self.modules():
            if m is not self and m is not self.fc and hasattr(m, "reset_parameters"):
                m.reset_parameters()
        self._init_classifier()
        if self.extra_init is not None:
            self.extra_init(self)
        return self

    @property
    def input_size(self) -> int:
        """The square resolution to evaluate and analyse at (``pretrained_cfg["test_input_size"]``)."""
        return int(self.pretrained_cfg.get("test_input_size", (3, 224, 224))[-1])

    def get_classifier(self) -> nn.Module:
        """The classifier layer (timm convention)."""
        return self.fc

    def reset_classifier(self, num_classes: int, *, device: torch.device | str | None = None,
                         dtype: torch.dtype | None = None) -> None:
        """A new classifier for ``num_classes`` (0: ``nn.Identity``, the pooled features), initialized
        as at construction (normal with ``fc_init_std``, or zeros), on the current device and dtype."""
        if num_classes < 0:
            raise ModelSpecError(f"num_classes must be >= 0, got {num_classes}")
        ref = next((p for n, p in self.named_parameters() if not n.startswith("fc.")), None)
        if ref is not None:
            device, dtype = device or ref.device, dtype or ref.dtype
        self.num_classes = num_classes
        self.pretrained_cfg["num_classes"] = num_classes
        if num_classes == 0:
            self.fc: nn.Module = nn.Identity()
            return
        # skip_init: no draws for nn.Linear's default init, which the family's init replaces at once
        fc = nn.utils.skip_init(nn.Linear, self.num_features, num_classes, device=device, dtype=dtype)
        # The generic meta-device recipe (FSDP, accelerate) calls every module's reset_parameters(): this
        # one gives the family's init, while the layer stays exactly an nn.Linear for type-keyed tools
        # (Opacus grad samplers, quantization mappings).
        fc.reset_parameters = functools.partial(init_classifier, fc, self.fc_init_std)
        self.fc = fc
        self._init_classifier()

    def _init_classifier(self) -> None:
        if isinstance(self.fc, nn.Linear):
            init_classifier(self.fc, self.fc_init_std)

    def blocks(self) -> list[nn.Module]:
        """All residual blocks in forward order."""
        return [b for stage in self.stages for b in stage]

    def set_grad_checkpointing(self, enable: bool = True) -> "ResidualNetwork":
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
    def feature_info(self) -> FeatureInfo:
        """``num_chs``, ``reduction`` (input stride) and ``module`` (its path in this network, as
        ``torchvision``'s ``create_feature_extractor`` names nodes) of each :meth:`forward_intermediates`
        map."""
        reduction = math.prod(_stride(m) for m in self.stem.modules())
        info = FeatureInfo([{"num_chs": self.stages[0][0].in_ch, "reduction": reduction, "module": "stem"}])
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

    def as_features(self, out_indices: Sequence[int] | None = None) -> FeatureNet:
        """A backbone of the maps at ``out_indices`` (``create_model(..., features_only=True)``);
        see :class:`FeatureNet`."""
        return FeatureNet(self, out_indices)

    def fuse(self) -> "ResidualNetwork":
        """Deploy form: same as ``normfree.deploy(self)`` (a frozen eval copy; ``self`` is untouched)."""
        return deploy(self)  # type: ignore[return-value]

    @torch.no_grad()
    def fold_scalars_(self) -> None:
        """Deploy mode, in place: the final activation's γ moves into the classifier (global average
        pooling and inference-mode dropout commute with a scalar). Blocks fold their own scalars."""
        final_act = self.final[-1] if isinstance(self.final, nn.Sequential) and len(self.final) else self.final
        if isinstance(final_act, GammaAct) and isinstance(self.fc, nn.Linear):
            self.fc.weight.mul_(final_act.factor)
            clear_factor(final_act)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Global average pool, dropout, classifier on :meth:`forward_features`' output (timm's
        split); ``pre_logits=True`` stops before the classifier."""
        x = self.drop(x.mean(dim=(2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name for :attr:`pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

    def no_weight_decay(self) -> set[str]:
        """Names of the parameters that get no weight decay (timm's hook; the trainer's rule,
        :func:`decay_exempt`: gains, biases, skip gains and other ≤1-D parameters)."""
        return {n for n, p in self.named_parameters() if decay_exempt(n, p)}

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """timm's parameter grouping for layer-wise learning-rate decay: the stem, then one group per
        stage (``coarse``) or per block, the final layers last (the classifier is left out)."""
        stage = r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)"
        return {"stem": r"^stem", "blocks": [(stage, None), (r"^final", (99999,))]}


def _check_input(x: torch.Tensor) -> torch.Tensor:
    if x.ndim != 4:
        raise ValueError(f"expected an NCHW batch, got a tensor of shape {tuple(x.shape)}")
    return x


torch.fx.wrap("_check_input")


def _stride(m: nn.Module) -> int:
    """A module's spatial stride (square strides only: every stem here), 1 for stride-less modules."""
    stride = getattr(m, "stride", 1)
    return stride[0] if isinstance(stride, tuple) else stride


def named_seq(**modules: nn.Module) -> nn.Sequential:
    """``nn.Sequential`` with readable child names (they become state-dict keys)."""
    return nn.Sequential(OrderedDict(modules))


class FeatureNet(nn.Module):
    """A backbone cut from a :class:`ResidualNetwork`: the feature maps at ``out_indices`` (indices into
    its :attr:`~ResidualNetwork.feature_info`), as a list, and no classifier, pooling or dropout, so
    every parameter takes part in the loss (DDP needs no ``find_unused_parameters``).

    Its direct children are ``stem``, ``stages_0`` … and ``final``, the network's modules (shared, not
    copied) flattened so that each feature map is a child's output: :attr:`feature_info`'s ``module``
    names are what torchvision's ``BackboneWithFPN(return_layers=...)`` / ``IntermediateLayerGetter``
    accept. State-dict keys change accordingly (``stages.0.…`` → ``stages_0.…``): load weights into the
    full network before cutting. Modules after the last requested map are dropped.
    """

    def __init__(self, net: ResidualNetwork, out_indices: Sequence[int] | None = None) -> None:
        super().__init__()
        full = net.feature_info
        n = len(full)
        requested = list(range(n)) if out_indices is None else list(out_indices)
        indices = {i % n for i in requested if -n <= i < n}
        if not requested or len(indices) != len(requested):
            raise ModelSpecError(f"out_indices must be distinct indices into the {n} feature maps "
                                 f"(0 = stem … {n - 1} = last stage), got {requested}")
        self.out_indices = sorted(indices)
        modules: OrderedDict[str, nn.Module] = OrderedDict(stem=net.stem)
        for i, stage in enumerate(net.stages):
            modules[f"stages_{i}"] = stage
        modules["final"] = net.final
        # feature k is the output of child k, except the last: stage n-2's output passes through `final`
        names = list(modules)
        keep = names[:self.out_indices[-1] + 1] if self.out_indices[-1] < n - 1 else names
        for name in keep:
            self.add_module(name, modules[name])
        self._returns = {("final" if k == n - 1 else names[k]) for k in self.out_indices}
        self.feature_info = FeatureInfo(
            {**full[k], "module": "final" if k == n - 1 else names[k]} for k in self.out_indices)
        self.pretrained_cfg = dict(net.pretrained_cfg)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = _check_input(x)
        out = []
        for name, module in self.named_children():
            x = module(x)
            if name in self._returns:
                out.append(x)
        return out

