"""Signal-propagation plots (SPPs, Brock et al. 2021): per-block statistics of the forward signal.

Definitions as the official code (``base.signal_metrics``): for a tensor with channels on dim 1,
*average channel squared mean* = mean_C(mean_NHW(x)²) and *average channel variance* =
mean_C(var_NHW(x)) with the biased variance. Measured on the stem output (the first block's input),
after every residual block, and at the end of every residual branch before stochastic depth, the skip
gain and α. Forward hooks only, so any model works unchanged.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..errors import DataError, ModelSpecError
from ..layers.conv import _ScaledStdConvNd
from ..layers.norms import EvoNormB0, EvoNormS0
from ..layers.proxynorm import ProxyNormAct
from ..models.blocks import unfolded
from .blocks import Block, find_blocks
from .grads import LossFn, gradient_stats
from .stats import channel_stats, first_tensor

@dataclass
class SPPResult:
    """SPP numbers of one model; lists are per residual block in forward order.

    ``res_var`` holds None where a block's residual branch is unknown. ``expected_var`` is the
    normfree prediction (1 + k·α² within a stage, reset at transitions) when it applies, else None.
    ``grad_var``/``grad_norm`` (gradient at each block output) are filled when gradients were asked for.
    The settings that change the picture travel with the numbers, for titles and the diagnosis:
    ``inputs`` says what was fed (``"N(0,1)"`` when :func:`signal_propagation` made the batch, else
    the caller's label or None), ``skip_gains`` the blocks' initial skip gains (None per block without
    one), ``std_conv`` whether every conv is weight-standardized and ``normalized`` whether the model
    has normalization layers (None where unknown, e.g. results saved before these fields existed).
    """

    model: str
    input_shape: list[int]
    names: list[str]
    transition: list[bool]
    stem_sq_mean: float
    stem_var: float
    sq_mean: list[float]
    var: list[float]
    res_var: list[float | None]
    expected_var: list[float] | None = None
    grad_var: list[float] | None = None
    grad_norm: list[float] | None = None
    step: int | None = None
    inputs: str | None = None
    skip_gains: list[float | None] | None = None
    std_conv: bool | None = None
    normalized: bool | None = None

    @property
    def deviation(self) -> list[float] | None:
        """Relative deviation of the measured variance from the expected curve, per block."""
        if self.expected_var is None:
            return None
        return [(v - e) / e for v, e in zip(self.var, self.expected_var)]

    def to_dict(self) -> dict:
        return {**asdict(self), "deviation": self.deviation}

    @classmethod
    def from_dict(cls, data: dict) -> SPPResult:
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of this result (also written to ``path`` if given); see :func:`save_json`."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_csv(self, path: str | Path) -> None:
        save_csv([self], path)


def save_json(results: Sequence[SPPResult], path: str | Path) -> None:
    Path(path).write_text(json.dumps({"results": [r.to_dict() for r in results]}, indent=1))


def load_json(path: str | Path) -> list[SPPResult]:
    """Results written by :func:`save_json` or :meth:`SPPResult.to_json`."""
    data = json.loads(Path(path).read_text())
    return [SPPResult.from_dict(d) for d in data.get("results", [data])]


CSV_COLUMNS = ("model", "step", "input_shape", "index", "name", "transition", "sq_mean", "var",
               "res_var", "expected_var", "deviation", "grad_var", "grad_norm", "skip_gain", "inputs",
               "std_conv", "normalized")
"""One row per model and block; index 0 is the stem (block statistics only). ``inputs``,
``std_conv`` and ``normalized`` describe the model and repeat on each of its rows."""


def _flag(value: bool | None) -> str:
    return "" if value is None else str(int(value))


def _unflag(text: str | None) -> bool | None:
    return None if not text else text == "1"



def save_csv(results: Sequence[SPPResult], path: str | Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            shape = "x".join(map(str, r.input_shape))
            step = "" if r.step is None else r.step
            about = [r.inputs or "", _flag(r.std_conv), _flag(r.normalized)]
            writer.writerow([r.model, step, shape, 0, "stem", "", r.stem_sq_mean, r.stem_var] + [""] * 6
                            + about)
            per_block = [r.res_var, r.expected_var, r.deviation, r.grad_var, r.grad_norm, r.skip_gains]
            for i, name in enumerate(r.names):
                extra = ["" if col is None or col[i] is None else col[i] for col in per_block]
                writer.writerow([r.model, step, shape, i + 1, name, int(r.transition[i]), r.sq_mean[i],
                                 r.var[i], *extra, *about])


def load_csv(path: str | Path) -> list[SPPResult]:
    """Results written by :func:`save_csv` (numbers round-trip exactly: ``repr`` floats)."""
    groups: dict[tuple[str, str], list[dict]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            groups.setdefault((row["model"], row["step"]), []).append(row)

    def column(rows: list[dict], key: str) -> list[float] | None:
        """A per-block column, or None unless every block has a value (as :func:`save_csv` writes)."""
        return [float(r[key]) for r in rows] if all(r[key] != "" for r in rows) else None

    results = []
    for (model, step), rows in groups.items():
        stem, blocks = rows[0], rows[1:]
        results.append(SPPResult(
            model=model, input_shape=[int(s) for s in stem["input_shape"].split("x")],
            names=[r["name"] for r in blocks], transition=[r["transition"] == "1" for r in blocks],
            stem_sq_mean=float(stem["sq_mean"]), stem_var=float(stem["var"]),
            sq_mean=[float(r["sq_mean"]) for r in blocks], var=[float(r["var"]) for r in blocks],
            res_var=[float(r["res_var"]) if r["res_var"] != "" else None for r in blocks],
            expected_var=column(blocks, "expected_var"), grad_var=column(blocks, "grad_var"),
            grad_norm=column(blocks, "grad_norm"), step=int(step) if step else None,
            inputs=stem.get("inputs") or None,
            skip_gains=[float(r["skip_gain"]) if r["skip_gain"] != "" else None for r in blocks]
            if any(r.get("skip_gain") for r in blocks) else None,
            std_conv=_unflag(stem.get("std_conv")), normalized=_unflag(stem.get("normalized"))))
    return results


@contextlib.contextmanager
def measurement_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no stochastic depth or dropout) with batch-statistics BatchNorm, as the paper measures.

    Every normalization with running statistics (BatchNorm, and any layer with a ``running_var``
    buffer, e.g. EvoNorm-B0) uses batch statistics. Every module's train/eval flag and those running
    statistics are restored on exit, so a measurement in the middle of training changes nothing.
    """
    modes = [(m, m.training) for m in model.modules()]
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             or "running_var" in dict(m.named_buffers(recurse=False))]
    saved = [(m, {k: b.clone() for k, b in m.named_buffers(recurse=False)}) for m in norms]
    model.eval()
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training
        with torch.no_grad():
            for m, buffers in saved:
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)


def _input_channels(model: nn.Module) -> int | None:
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return m.in_channels
    return None


def make_inputs(model: nn.Module, input_shape: Sequence[int] | None = None, seed: int = 0,
                batch: int = 16, size: int | None = None) -> torch.Tensor:
    """Seeded N(0, 1) images on the model's device and dtype; default shape ``(batch, C, size, size)``
    with C from the model's first conv and ``size`` from ``model.input_size`` (224 if absent)."""
    if input_shape is None:
        size = size or int(getattr(model, "input_size", 224))
        input_shape = (batch, _input_channels(model) or 3, size, size)
    param = next(model.parameters(), None)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*input_shape, generator=gen)
    return x.to(param.device, param.dtype) if param is not None else x


def check_inputs(model: nn.Module, x: torch.Tensor) -> None:
    """Clear errors for batches the statistics cannot be measured on."""
    if x.ndim < 2:
        raise DataError(f"expected a batch with channels on dim 1, got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise DataError(f"batch of {x.shape[0]}: SPP statistics (and BatchNorm batch statistics) need "
                        "at least 2 examples; use a batch of 8 or more")
    channels = _input_channels(model)
    if channels is not None and x.shape[1] != channels:
        raise DataError(f"input has {x.shape[1]} channels but the model's first conv expects {channels}"
                        f" (input shape {tuple(x.shape)}; channels go on dim 1, NCHW)")
    bad = int((~torch.isfinite(x)).sum()) if x.is_floating_point() else 0
    if bad:
        raise DataError(f"the input batch holds {bad} NaN or infinite value(s) of {x.numel()}; SPP statistics "
                        "need finite inputs")


NORMALIZATIONS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, EvoNormB0, EvoNormS0,
                  ProxyNormAct)


def _traits(model: nn.Module, blocks: list[Block]) -> dict:
    """Settings that change the picture: initial skip gains, weight-standardized convs, normalization."""
    gains = [getattr(b.module, "skip_gain", None) for b in blocks]
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    return {"skip_gains": [None if g is None else float(g.detach()) for g in gains]
            if any(g is not None for g in gains) else None,
            "std_conv": bool(convs) and all(isinstance(m, _ScaledStdConvNd) or "StdConv" in type(m).__name__
                                            for m in convs),
            "normalized": any(isinstance(m, NORMALIZATIONS) for m in model.modules())}


def _expected_var(model: nn.Module, blocks: list[Block]) -> list[float] | None:
    """The model's own prediction (``model.expected_var``), valid only with unit skip gains."""
    expected = getattr(model, "expected_var", None)
    if expected is None or len(expected) != len(blocks):
        return None
    gains = [getattr(b.module, "skip_gain", None) for b in blocks]
    if any(g is None or not math.isclose(float(g.detach()), 1.0) for g in gains):
        return None
    return [float(e) for e in expected]


def signal_propagation(model: nn.Module, inputs: torch.Tensor | None = None, *,
                       input_shape: Sequence[int] | None = None, blocks: Sequence[str] | str | None = None,
                       branch: str | None = None, seed: int = 0, gradients: bool = False,
                       loss_fn: LossFn | None = None) -> SPPResult:
    """Measure an SPP of ``model`` on ``inputs`` (default: seeded N(0,1) images of ``input_shape``).

    ``result.inputs`` is ``"N(0,1)"`` for the seeded batch and None for given ``inputs`` (label them).

    Args:
        blocks / branch: module-name patterns and branch submodule for models whose blocks are not
            found automatically (see :func:`~normfree.analysis.blocks.find_blocks`).
        gradients: also measure the gradient at every block output (see :mod:`.grads`), for
            ``loss_fn(output, labels)``; default cross-entropy on seeded random labels.
    The model is measured in :func:`measurement_mode`, its blocks on the plain path (the hooks read
    their branches; see :func:`~normfree.models.blocks.unfolded`), and left exactly as it was.
    """
    found = find_blocks(model, blocks, branch)
    x = make_inputs(model, input_shape, seed) if inputs is None else inputs
    check_inputs(model, x)
    taps = _Taps(found, keep_outputs=gradients)
    with taps.attached(), measurement_mode(model), unfolded(model), torch.set_grad_enabled(gradients):
        logits = model(x.detach().requires_grad_(True) if gradients else x)
        grads = gradient_stats(taps.outputs, logits, loss_fn, seed) if gradients else None
    result = taps.result(model, x, grads)
    result.inputs = "N(0,1)" if inputs is None else None
    return result


class _Taps:
    """Forward hooks on the stem input, every block output and every branch end; each records the first
    call only (a block called twice is measured once)."""

    def __init__(self, found: list[Block], keep_outputs: bool) -> None:
        self.found, self.keep_outputs = found, keep_outputs
        self.stem: list[tuple[float, float]] = []
        self.blocks: dict[str, tuple[float, float]] = {}  # in forward order
        self.branches: dict[str, float] = {}
        self.outputs: list[torch.Tensor] = []  # block outputs, kept only for the backward pass

    def _on_stem(self, _m: nn.Module, args: tuple) -> None:
        if not self.stem:
            self.stem.append(channel_stats(first_tensor(args)))

    def _on_block(self, name: str) -> Callable:
        def hook(_m: nn.Module, _args: tuple, out: object) -> None:
            if name not in self.blocks:
                self.blocks[name] = channel_stats(first_tensor(out))
                if self.keep_outputs:
                    self.outputs.append(first_tensor(out))
        return hook

    def _on_branch(self, name: str) -> Callable:
        def hook(_m: nn.Module, _args: tuple, out: object) -> None:
            self.branches.setdefault(name, channel_stats(first_tensor(out))[1])
        return hook

    @contextlib.contextmanager
    def attached(self) -> Iterator[None]:
        handles = [self.found[0].module.register_forward_pre_hook(self._on_stem)]
        for b in self.found:
            handles.append(b.module.register_forward_hook(self._on_block(b.name)))
            if b.branch_end is not None:
                handles.append(b.branch_end.register_forward_hook(self._on_branch(b.name)))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def result(self, model: nn.Module, x: torch.Tensor,
               grads: tuple[list[float], list[float]] | None) -> SPPResult:
        missing = [b.name for b in self.found if b.name not in self.blocks]
        if missing:
            raise ModelSpecError(f"blocks {missing} were never called by the model's forward")
        order = list(self.blocks)
        by_name = {b.name: b for b in self.found}
        return SPPResult(
            model=str(getattr(model, "model_name", type(model).__name__)), input_shape=list(x.shape),
            names=order, transition=[by_name[n].transition for n in order],
            stem_sq_mean=self.stem[0][0], stem_var=self.stem[0][1],
            sq_mean=[self.blocks[n][0] for n in order], var=[self.blocks[n][1] for n in order],
            res_var=[self.branches.get(n) for n in order],
            expected_var=_expected_var(model, [by_name[n] for n in order]),
            grad_var=grads[0] if grads else None, grad_norm=grads[1] if grads else None,
            **_traits(model, [by_name[n] for n in order]))
