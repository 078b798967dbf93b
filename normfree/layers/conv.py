"""Scaled Weight Standardization convolution and TensorFlow-'SAME' padding.

Official formula (DeepMind ``base.WSConv2D``)::

    Ŵ = gain · (W − mean) / sqrt(max(fan_in · var, eps)),   eps = 1e-4,  fan_in = (in/groups)·kh·kw

with biased per-output-channel variance, a per-channel gain (init 1) and a bias that is always present.
γ is *not* in the conv: it lives in the activation (see :class:`~normfree.layers.GammaAct`).
timm's convention (``ws="timm"``) is offered for loading timm weights: (W − mean)/sqrt(var + eps) with
eps = 1e-5, and γ/sqrt(fan_in) folded into the conv scale. ``ws="plain"`` is the unscaled Weight
Standardization of Qiao et al. (W − mean)/(std + 1e-5), unbiased std and no gain, meant to be followed
by GroupNorm/BatchNorm (the GN+WS baseline).
"""
from __future__ import annotations

import contextlib
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelSpecError, NormfreeError

Padding = Literal["same", "symmetric"]


def same_pad_amounts(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) along one axis: asymmetric when the total is odd.

    Integer arithmetic only (``%``, no ``math.ceil``), so the same code gives a Python int in eager
    mode and one small symbolic formula, with no guard on the size, under ``torch.export``/dynamo: a
    graph exported with dynamic H/W pads correctly at every size. ``(ceil(n/s) - 1)·s + k - n =
    k - s + (-n mod s)``, never negative when k ≥ s (every strided SAME layer here; 1×1 strided convs
    pad statically). ``torch.jit.trace`` (the legacy ONNX exporter) is refused: it would record the
    amounts of the traced size as constants, a graph silently wrong at any other H/W.
    """
    if isinstance(size, torch.Tensor):  # torch.jit.trace hands out sizes as tensors
        raise NormfreeError("TF-'SAME' padding cannot be recorded by torch.jit.trace (the legacy ONNX "
                            "exporter): it would be a constant of the traced size. Export through "
                            "torch.export (torch.onnx.export(..., dynamo=True)), or build the model "
                            "with padding='symmetric' and no average-pool shortcut.")
    effective = (kernel - 1) * dilation + 1
    total = effective - stride + (-size) % stride
    if effective < stride:
        total = torch.sym_max(total, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...],
             dilation: tuple[int, ...] | None = None, value: float = 0.0) -> torch.Tensor:
    """Pad the trailing ``len(kernel)`` dims the way TensorFlow's 'SAME' does (depends on the size).

    A leaf of ``torch.fx.symbolic_trace`` (the size arithmetic cannot run on FX proxies)."""
    dilation = dilation or (1,) * len(kernel)
    pads: list = []
    for i in reversed(range(len(kernel))):  # F.pad lists the last dim first
        pads += same_pad_amounts(x.shape[i - len(kernel)], kernel[i], stride[i], dilation[i])
    if all(type(p) is int for p in pads) and not any(pads):
        return x  # eager fast path; symbolic sizes always pad (a zero pad is a no-op)
    return F.pad(x, pads, value=value)


torch.fx.wrap("pad_same")


def _static_padding(kernel: tuple[int, ...], stride: tuple[int, ...],
                    dilation: tuple[int, ...], padding: Padding) -> tuple[int, ...] | None:
    """Fixed symmetric padding where it equals the requested mode for every input size, else None."""
    sym = tuple(((k - 1) * d) // 2 for k, d in zip(kernel, dilation))
    if padding == "symmetric":
        return sym
    if padding != "same":
        raise ModelSpecError(f"padding must be 'same' or 'symmetric', got {padding!r}")
    # SAME at stride 1 with an odd effective kernel is symmetric; stride 1 kernel 1 is zero padding.
    if all(s == 1 and ((k - 1) * d) % 2 == 0 for k, s, d in zip(kernel, stride, dilation)):
        return sym
    if all(k == 1 for k in kernel):
        return (0,) * len(kernel)  # 1x1 strided: SAME never pads
    return None


def _ws_inv_std(var: torch.Tensor, fan_in: int, eps: float, const: float | None) -> torch.Tensor:
    """Per-channel 1/std: official rsqrt(max(fan_in·var, eps)), or timm's const·rsqrt(var + eps)."""
    if const is None:
        return torch.rsqrt(torch.clamp(var * fan_in, min=eps))
    return torch.rsqrt(var + eps) * const


class _ScaledWSFunction(torch.autograd.Function):
    """Ŵ = (W − μ)·m with m = s·gain·scale per output channel, and a hand-written backward.

    Autograd on the textbook formula keeps W − μ and makes ~8 passes over W-sized tensors per step;
    weights are small next to activations at large batch, but not at the small batches of CPU training.

    The backward *is* a BatchNorm backward over the weight viewed as (1, out_channels, fan_in): with
    X = W − μ, G = dL/dŴ and 1/σ the BatchNorm inverse std (official: v^-1/2, timm: (v + eps)^-1/2)::

        dL/dW = m·(G − mean G − X·mean(G·X)/σ²)       dL/dm = Σ G·X

    so it runs as one fused ``native_batch_norm_backward`` (two sweeps over W, like timm's WS) with
    BatchNorm weight m·σ. Where the official clamp max(fan_in·v, eps) is active, s does not depend on v
    and the projection term must vanish: there 1/σ is replaced by a value 10^6 below s·√fan_in, which
    leaves the projection below 1e-12 of the kept term while m·σ keeps the scale exact.
    """

    generate_vmap_rule = True  # torch.func (vmap/grad): per-example gradients, e.g. for DP-SGD

    @staticmethod
    def forward(w: torch.Tensor, gain: torch.Tensor, scale: torch.Tensor | float, fan_in: int,
                eps: float, const: float | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Ŵ, μ, v): the statistics are returned, not stashed, so that torch.func can transform this."""
        dims = tuple(range(1, w.ndim))
        no_autocast = (contextlib.nullcontext() if w.device.type == "meta"  # autocast knows no meta
                       else torch.autocast(w.device.type, enabled=False))
        with no_autocast:  # statistics stay in fp32 under autocast
            mean = w.mean(dim=dims, keepdim=True)
            out = w - mean
            var = torch.linalg.vector_norm(out, dim=dims, keepdim=True).square_() / fan_in
        return out.mul_(_ws_inv_std(var, fan_in, eps, const) * (_per_channel(gain, w) * scale)), mean, var

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        w, gain, scale, fan_in, eps, const = inputs
        _, mean, var = output
        ctx.mark_non_differentiable(mean, var)
        scale_t = scale if isinstance(scale, torch.Tensor) else None  # a float needs no gradient
        ctx.save_for_backward(w, mean, var, gain, scale_t)
        ctx.fan_in, ctx.eps, ctx.const, ctx.scale = fan_in, eps, const, scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor, *_stats):  # type: ignore[override]
        w, mean, var, gain, scale_t = ctx.saved_tensors
        scale = ctx.scale if scale_t is None else scale_t
        n, eps = ctx.fan_in, ctx.eps
        inv_std = _ws_inv_std(var, n, eps, ctx.const)
        q = _per_channel(gain, w) * scale
        if ctx.const is None:
            bn_inv = torch.where(var * n >= eps, torch.rsqrt(var), inv_std * (math.sqrt(n) * 1e-6))
        else:
            bn_inv = torch.rsqrt(var + eps)
        want_m = ctx.needs_input_grad[1] or ctx.needs_input_grad[2]
        grad_rows, grad_m, _ = torch.ops.aten.native_batch_norm_backward(
            _rows(grad.to(w.dtype), w).unsqueeze(0), _rows(w, w).unsqueeze(0),
            (inv_std * q / bn_inv).view(-1), None, None, mean.view(-1), bn_inv.view(-1), True, 0.0,
            [ctx.needs_input_grad[0], want_m, False])
        grad_w = _unrows(grad_rows[0], w) if ctx.needs_input_grad[0] else None
        d_q = _per_channel(grad_m, w) * (inv_std / bn_inv) if want_m else None  # Σ G·X·s
        grad_gain = (d_q * scale).view(-1) if ctx.needs_input_grad[1] else None
        grad_scale = ((d_q * _per_channel(gain, w)).sum()
                      if scale_t is not None and ctx.needs_input_grad[2] else None)
        return grad_w, grad_gain, grad_scale, None, None, None


def _tracing() -> bool:
    """Under ``torch.jit.trace`` (legacy ONNX export) or ``torch.fx.symbolic_trace``: the textbook
    formula is traced instead of the custom autograd Function, which neither tracer can record."""
    return torch.jit.is_tracing() or torch.fx._symbolic_trace.is_fx_symbolic_tracing()


def _per_channel(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """An (out_channels,) vector shaped to broadcast over ``like``'s output-channel axis."""
    return t.view(-1, *(1,) * (like.ndim - 1))


_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}


def _row_dims(like: torch.Tensor) -> list[int]:
    """Non-output dims of ``like`` in memory order: channels last for a channels_last weight, else
    standard (any other layout is copied by :func:`_rows`). No stride sorting: torch.compile traces it."""
    fmt = _CHANNELS_LAST.get(like.ndim)
    if fmt is not None and not like.is_contiguous() and like.is_contiguous(memory_format=fmt):
        return [*range(2, like.ndim), 1]
    return list(range(1, like.ndim))


def _rows(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` as (out_channels, fan_in) rows, in ``like``'s memory order: a view when layouts agree
    (contiguous or channels_last alike), so row reductions cost one read and no copy."""
    return t.permute(0, *_row_dims(like)).reshape(t.shape[0], -1)


def _unrows(rows: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_rows`: a tensor shaped and laid out like ``like``."""
    dims = _row_dims(like)
    shaped = rows.view(like.shape[0], *(like.shape[d] for d in dims))
    return shaped.permute(0, *(1 + dims.index(d) for d in range(1, like.ndim)))


class _ScaledStdConvNd:
    """Scaled Weight Standardization for ``nn.Conv1d/2d/3d``, recomputed from the raw weight on every call.

    Statistics are over each output channel's fan-in (every weight axis but the first), whatever the
    number of spatial dims.

    Args:
        padding: ``"same"`` (TensorFlow, asymmetric at stride 2, as the official code) or
            ``"symmetric"`` (PyTorch-style ``(k-1)//2``).
        ws: ``"official"`` (max(fan_in·var, eps), eps=1e-4), ``"timm"`` (var + eps, eps=1e-5, γ in scale)
            or ``"plain"`` (Qiao et al.: unbiased std + eps, eps=1e-5, no gain parameter).
        gamma: only used with ``ws="timm"``, where the activation gain lives in the conv.
        eps: overrides the mode's default epsilon.
    """

    weight: nn.Parameter
    bias: nn.Parameter | None
    kernel_size: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...] | str

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, ...],
                 stride: int | tuple[int, ...] = 1, padding: Padding = "same",
                 dilation: int | tuple[int, ...] = 1, groups: int = 1, bias: bool = True,
                 ws: Literal["official", "timm", "plain"] = "official", gamma: float = 1.0,
                 eps: float | None = None, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0,  # type: ignore[call-arg]
                         dilation=dilation, groups=groups, bias=bias, device=device, dtype=dtype)
        if ws not in ("official", "timm", "plain"):
            raise ModelSpecError(f"ws must be 'official', 'timm' or 'plain', got {ws!r}")
        if ws != "timm" and gamma != 1.0:
            raise ModelSpecError(f"with ws={ws!r} γ belongs in the activation, not the conv")
        static = _static_padding(self.kernel_size, self.stride, self.dilation, padding)
        self.padding_mode_same = static is None
        if static is not None:
            self.padding = static
        self.pad_type = padding
        self.ws = ws
        self.gamma = float(gamma)
        self.eps = float(eps if eps is not None else (1e-4 if ws == "official" else 1e-5))
        self.fan_in = self.weight[0].numel()
        self.gain = (nn.Parameter(torch.ones(out_channels, device=device, dtype=dtype))
                     if ws != "plain" else None)

    def reset_parameters(self) -> None:
        """Initialize as the official code: fan-in normal weight, zero bias, unit gain.

        ``nn.ConvNd``'s own initialization runs first and is overwritten, so the random numbers a
        seeded build draws are those of the plain conv of the same shape followed by this one.
        (``nn.ConvNd.__init__`` calls this before ``gain`` exists; ``__init__`` creates it as ones.)
        """
        super().reset_parameters()  # type: ignore[misc]
        nn.init.normal_(self.weight, 0.0, 1.0 / math.sqrt(self.weight[0].numel()))
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        if getattr(self, "gain", None) is not None:
            nn.init.ones_(self.gain)

    def standardized_weight(self, scale: torch.Tensor | float | None = None) -> torch.Tensor:
        """Ŵ (times ``scale``, folded into the per-channel multiplier at no extra pass over W).

        With gradients enabled this runs :class:`_ScaledWSFunction` (fp32 statistics even under
        autocast; nothing W-sized kept for backward but W); otherwise
        :meth:`standardized_weight_reference`.
        """
        if (self.gain is not None and torch.is_grad_enabled() and not _tracing()
                and (self.weight.requires_grad or self.gain.requires_grad)):
            return _ScaledWSFunction.apply(self.weight, self.gain, 1.0 if scale is None else scale,
                                           self.fan_in, self.eps, self._ws_const)[0]
        return self.standardized_weight_reference(scale)

    def standardized_weight_reference(self, scale: torch.Tensor | float | None = None) -> torch.Tensor:
        """The textbook formula, with plain reductions (no ``std_mean``) so it exports to ONNX."""
        w = self.weight
        dims = tuple(range(1, len(self.kernel_size) + 2))  # not w.ndim: w is a proxy under torch.fx
        mean = w.mean(dim=dims, keepdim=True)
        centered = w - mean
        var = centered.square().mean(dim=dims, keepdim=True)
        if self.gain is None:  # plain WS (Qiao et al.): unbiased std + eps, no gain
            n = self.fan_in
            mult = 1.0 / ((var * (n / max(n - 1, 1))).sqrt() + self.eps)
        else:
            mult = _ws_inv_std(var, self.fan_in, self.eps, self._ws_const) * self.gain.view(-1, *(1,) * len(dims))
        if scale is not None:
            mult = mult * scale
        return centered * mult

    @property
    def _ws_const(self) -> float | None:
        """None for the official max(fan_in·var, eps); γ/sqrt(fan_in) for timm's (var + eps)."""
        return None if self.ws == "official" else self.gamma / math.sqrt(self.fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_forward(self, x)  # type: ignore[arg-type]

    def extra_repr(self) -> str:
        return super().extra_repr() + f", pad={self.pad_type}, ws={self.ws}, eps={self.eps:g}"  # type: ignore[misc]


class ScaledStdConv1d(_ScaledStdConvNd, nn.Conv1d):
    """Conv1d with Scaled Weight Standardization (sequences, audio); options as :class:`ScaledStdConv2d`."""


class ScaledStdConv2d(_ScaledStdConvNd, nn.Conv2d):
    """Conv2d with Scaled Weight Standardization, recomputed from the raw weight on every call.

    Args (all but the ``nn.Conv2d`` ones): see :class:`_ScaledStdConvNd`.
    """


class ScaledStdConv3d(_ScaledStdConvNd, nn.Conv3d):
    """Conv3d with Scaled Weight Standardization (video, volumes); options as :class:`ScaledStdConv2d`."""


class HeConv2d(nn.Conv2d):
    """A plain conv with He (fan-in, ReLU gain) normal init and the padding modes of the Scaled-WS
    convs, for the normalized baselines and the "no Scaled WS" ablation."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 groups: int = 1, padding: Padding = "same", bias: bool = False,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> None:
        static = _static_padding((kernel_size,) * 2, (stride,) * 2, (1, 1), padding)
        super().__init__(in_channels, out_channels, kernel_size, stride, 0 if static is None else static, groups=groups,
                         bias=bias, device=device, dtype=dtype)
        self.padding_mode_same = static is None

    def reset_parameters(self) -> None:
        """He-normal weight, zero bias (after ``nn.Conv2d``'s own draws, as for the Scaled-WS convs)."""
        super().reset_parameters()
        nn.init.kaiming_normal_(self.weight, mode="fan_in", nonlinearity="relu")
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_forward(self, x)


class SamePadConv2d(nn.Conv2d):
    """Plain Conv2d with TensorFlow-'SAME' padding computed from the input size."""

    padding_mode_same = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_forward(self, x)


def plain_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    """A plain conv with ``conv``'s geometry (dynamic TF-SAME padding where it had it) holding the
    given tensors: how deploy mode turns Scaled-WS convs and conv → BatchNorm pairs into one conv."""
    same = getattr(conv, "padding_mode_same", False)
    cls, padding = (SamePadConv2d, 0) if same else (nn.Conv2d, conv.padding)
    new = cls(conv.in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
              conv.stride, padding, conv.dilation, conv.groups, bias=bias is not None,  # type: ignore[arg-type]
              device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


_CONV_FNS = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}  # by weight rank (spatial dims + 2)


def conv_forward(conv: nn.modules.conv._ConvNd, x: torch.Tensor,
                 weight_scale: torch.Tensor | float | None = None,
                 bias_scale: torch.Tensor | float | None = None) -> torch.Tensor:
    """``conv(x)`` with the weight multiplied by ``weight_scale`` and the bias by ``bias_scale``.

    This is how scalars that would otherwise cost a pass over a (large) activation are folded into a
    (small) weight: ``conv(c·x) = conv_{c·W}(x)`` and ``c·conv(x) = conv_{c·W, c·b}(x)``. Works for
    the Scaled-WS convs (the scale rides on their per-channel multiplier; also their ``forward``),
    :class:`HeConv2d`, :class:`SamePadConv2d` and plain ``nn.Conv1d/2d/3d``.
    """
    if isinstance(conv, _ScaledStdConvNd):
        weight = conv.standardized_weight(weight_scale)
    else:
        weight = conv.weight if weight_scale is None else conv.weight * weight_scale
    bias = conv.bias
    if bias is not None and bias_scale is not None:
        bias = bias * bias_scale
    padding = conv.padding
    if getattr(conv, "padding_mode_same", False):
        x = pad_same(x, conv.kernel_size, conv.stride, conv.dilation)
        padding = 0
    return _CONV_FNS[len(conv.kernel_size) + 2](x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)


class MaxPoolSame(nn.Module):
    """3x3/2 max-pool with TensorFlow-'SAME' padding (padded cells never win: they hold -inf)."""

    def __init__(self, kernel_size: int = 3, stride: int = 2, padding: Padding = "same") -> None:
        super().__init__()
        self.kernel_size, self.stride, self.pad_type = kernel_size, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        if self.pad_type == "symmetric":
            return F.max_pool2d(x, k, s, padding=(k - 1) // 2)
        x = pad_same(x, (k, k), (s, s), value=float("-inf"))
        return F.max_pool2d(x, k, s)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, pad={self.pad_type}"


class AvgPoolSame(nn.Module):
    """2x2/2 average pool with TF-'SAME' semantics (padded cells excluded from the average).

    Used by the NF-RegNet/NFNet transition shortcut; for even sizes it is a plain 2x2 average.
    """

    def __init__(self, kernel_size: int = 2, stride: int = 2) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool_same(x, self.kernel_size, self.stride)


def avg_pool_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """``k``×``k``/``s`` average pool, TF-'SAME', padded cells excluded (a ``torch.fx`` leaf)."""
    top, bottom = same_pad_amounts(x.shape[-2], k, s)
    left, right = same_pad_amounts(x.shape[-1], k, s)
    pads = [left, right, top, bottom]
    if all(type(p) is int for p in pads) and not any(pads):
        return F.avg_pool2d(x, k, s)
    ones = F.pad(torch.ones_like(x[:1, :1]), pads)
    return F.avg_pool2d(F.pad(x, pads), k, s) / F.avg_pool2d(ones, k, s)


torch.fx.wrap("avg_pool_same")
