"""Plain-words diagnosis of an SPP: what goes wrong, at which block it starts, and what usually fixes it.

Thresholds are rules of thumb from the paper's plots (Brock et al. 2021, Section 2); each finding states
the numbers it is based on so the reader can judge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .spp import SPPResult

MEAN_SHIFT_RATIO = 0.05    # squared channel mean as a fraction of the channel variance
MEAN_SHIFT_GROWTH = 5.0    # last block / first block squared mean that counts as "growing with depth"
MEAN_SHIFT_RESET = 0.7    # a transition that multiplies the squared mean by less than this resets it
VAR_EXPLODE = 100.0        # block variance / stem variance
VAR_COLLAPSE = 0.01
EXPECTED_TOLERANCE = 0.25  # relative deviation from the expected 1 + k·α² curve
RESIDUAL_TOLERANCE = 0.5   # |residual-branch variance − 1|
GRAD_RATIO = 100.0         # first-block / last-block gradient norm (or its inverse)


@dataclass(frozen=True)
class Finding:
    """One problem: ``kind`` (identity, mean_shift, variance, expected, residual, gradients, nonfinite;
    identity = every skip gain 0, so no block's branch reaches its output), the block
    where it starts, numbered as in the figure and the CSV (1 = first block; -1 when it concerns no
    single block), and a plain-words message."""

    kind: str
    block: int
    message: str


def _first(values: Sequence[float], test) -> int:
    return next(i for i, v in enumerate(values) if test(v))


def _at(r: SPPResult, i: int) -> str:
    """Block ``i`` (list index) as the figure and CSV number it."""
    return f"block {i + 1} ({r.names[i]})"


def _mean_shift(r: SPPResult) -> Finding | None:
    ratios = [s / v if v > 0 else math.inf for s, v in zip(r.sq_mean, r.var)]
    if max(ratios) < MEAN_SHIFT_RATIO:
        return None
    start = _first(ratios, lambda x: x >= MEAN_SHIFT_RATIO)
    worst = max(range(len(ratios)), key=ratios.__getitem__)
    first, last = r.sq_mean[0], r.sq_mean[-1]
    resets = [i for i in range(1, len(r.names)) if r.transition[i]]
    if resets and all(r.sq_mean[i] < MEAN_SHIFT_RESET * r.sq_mean[i - 1] for i in resets):
        how = ("it builds up within each stage and resets at every stage transition (what normalization "
               "layers do), so it does not accumulate through the whole network")
    elif last >= MEAN_SHIFT_GROWTH * max(first, 1e-12):
        how = f"it grows with depth, from {first:.3g} after the first block to {last:.3g} after the last"
    else:
        how = "it is present from the start and does not fade"
    if r.std_conv:  # never recommend what the model has: the weights are zero-mean already
        fix = ("Every conv already has zero-mean (standardized) weights, so the shift enters between them (the "
               "inputs, zero padding, the activations)" + ("." if r.normalized else
                                                            "; a normalization layer re-centres it."))
    else:
        fix = ("Zero-mean weights remove it: Scaled Weight Standardization (normfree: std_conv=True, the "
               "default)" + ("." if r.normalized else ", or a normalization layer that re-centres the signal."))
    fix += " A growing mean shift makes all examples look alike to later layers and hurts training."
    return Finding("mean_shift", start + 1,
                   f"Mean shift: the average channel squared mean exceeds {MEAN_SHIFT_RATIO:.0%} of the "
                   f"variance from {_at(r, start)} on, up to {ratios[worst]:.0%} at block "
                   f"{worst + 1}; {how}. {fix}")


def _variance(r: SPPResult) -> Finding | None:
    ref = r.stem_var if r.stem_var > 0 else 1.0
    rel = [v / ref for v in r.var]
    if max(rel) > VAR_EXPLODE:
        i = _first(rel, lambda x: x > math.sqrt(VAR_EXPLODE))
        return Finding("variance", i + 1,
                       f"Exploding variance: up to {max(rel):.3g}x the stem's, above "
                       f"{math.sqrt(VAR_EXPLODE):g}x from {_at(r, i)} on. Scale residual branches down (α, "
                       "β = 1/expected std, a zero skip gain at init)" + ("" if r.normalized else " or normalize")
                       + "; in a plain ResNet the variance adds up block after block.")
    if min(rel) < VAR_COLLAPSE:
        i = _first(rel, lambda x: x < math.sqrt(VAR_COLLAPSE))
        return Finding("variance", i + 1,
                       f"Collapsing variance: down to {min(rel):.3g}x the stem's, below "
                       f"{math.sqrt(VAR_COLLAPSE):g}x from {_at(r, i)} on. Check the init gains "
                       "(He fan-in for ReLU, the activation's γ with Scaled WS) and that shortcuts pass the "
                       "signal through.")
    return None


def _expected(r: SPPResult) -> Finding | None:
    dev = r.deviation
    if dev is None or max(abs(d) for d in dev) <= EXPECTED_TOLERANCE:
        return None
    i = _first(dev, lambda d: abs(d) > EXPECTED_TOLERANCE)
    return Finding("expected", i + 1,
                   f"Variance off the expected 1 + k·α² curve by {dev[i]:+.0%} at {_at(r, i)} "
                   f"(worst {max(dev, key=abs):+.0%}). The β/α bookkeeping assumes variance-preserving "
                   f"branches: check {'' if r.std_conv else 'Scaled WS, '}the activation's γ and the input "
                   "scale.")


def _residual(r: SPPResult) -> Finding | None:
    res = [(i, v) for i, v in enumerate(r.res_var) if v is not None]
    if not res:
        return None
    if all(v < 1e-8 for _, v in res):
        return Finding("residual", res[0][0] + 1,
                       "Residual branches output exactly zero: they are zero-initialized (e.g. Fixup's zero "
                       "last conv, a zero-init last BN γ or SkipInit inside the branch), so the network is the "
                       "identity plus shortcuts at init. Build with non-zero branch init to analyse "
                       "propagation.")
    far = [(i, v) for i, v in res if abs(v - 1.0) > RESIDUAL_TOLERANCE]
    if not far:
        return None
    i, v = far[0]
    worst = max(far, key=lambda t: abs(t[1] - 1.0))
    return Finding("residual", i + 1,
                   f"Residual-branch variance far from 1: {v:.3g} at {_at(r, i)}, worst {worst[1]:.3g} "
                   f"at block {worst[0] + 1}, {len(far)} of {len(res)} blocks off by more than "
                   f"{RESIDUAL_TOLERANCE}. " + _residual_fix(r))


def _residual_fix(r: SPPResult) -> str:
    """What keeps residual-branch variance near 1, leaving out what the model already has."""
    low = all(v is None or v < 1 for v in r.res_var)
    if r.std_conv and low and r.stem_var < 0.5:
        return ("The model already uses Scaled WS, so the low branch variance follows from the low-variance "
                "input (the stem note says why): on N(0,1) inputs the same net keeps it near 1.")
    remedies = [text for has, text in ((r.std_conv, "Scaled WS with the activation's γ"),
                                       (r.normalized, "He init with normalization")) if not has]
    if not remedies:
        return ("The model already has standardized convs and normalization, so the branch scale comes from "
                "the weights' own scale (plain WS gives unit-variance weights, Scaled WS 1/fan-in) or the "
                "activations.")
    return (f"Variance-preserving branches ({', or '.join(remedies)}) keep it near 1; a low value means the "
            "branch loses signal, often to a mean shift the ReLUs cut off.")


def _identity(r: SPPResult) -> Finding | None:
    """Every skip gain 0 at init: each block outputs its shortcut, whatever its branch computes."""
    gains = r.skip_gains
    if not gains or any(g is None or g != 0 for g in gains):
        return None
    return Finding("identity", -1,
                   f"Residual branches are off at init: all {len(gains)} skip gains are 0, so every block "
                   "outputs its shortcut (the identity, except the transition blocks' projections) and the "
                   "forward curves show the stem and the shortcuts, not how the branches propagate signal. "
                   "That is the intended init for training (NF nets, SkipInit); to see the branches at work, "
                   "measure with skip gain 1 (normfree spp --skipinit-gain 1, or build with "
                   "skipinit_gain=1.0). The residual-branch panel is measured before the gain and stays "
                   "meaningful.")


def _gradients(r: SPPResult) -> Finding | None:
    g = r.grad_norm
    if g is None:
        return None
    if all(x == 0 for x in g):
        return Finding("gradients", -1,
                       "Zero gradient at every block output: the classifier is zero-initialized (as the "
                       "official BN baseline, fc_init_std=0), so at step 0 only the classifier learns. Not a "
                       "propagation problem; use fc_init_std > 0 to see how gradients propagate.")
    last = g[-1]
    ratio = g[0] / last if last > 0 else math.inf
    if ratio < 1 / GRAD_RATIO:
        i = max(i for i, x in enumerate(g) if x < last / math.sqrt(GRAD_RATIO))
        return Finding("gradients", i + 1,
                       f"Vanishing gradients: the gradient norm at the first block is {ratio:.2g}x the last "
                       f"block's; it falls below {1 / math.sqrt(GRAD_RATIO):g}x at {_at(r, i)} "
                       "going backward. Residual branches with a small init (skip gain, α) and shortcuts "
                       "that pass the signal keep gradients flowing.")
    if ratio > GRAD_RATIO:
        i = max(i for i, x in enumerate(g) if x > last * math.sqrt(GRAD_RATIO))
        return Finding("gradients", i + 1,
                       f"Exploding gradients: the gradient norm at the first block is {ratio:.3g}x the last "
                       f"block's; it exceeds {math.sqrt(GRAD_RATIO):g}x at {_at(r, i)} going "
                       "backward. Smaller α or a zero skip gain at init, adaptive gradient clipping "
                       "(NFNets), or a lower learning rate help.")
    return None


def _stem_note(r: SPPResult) -> str:
    if 0.5 <= r.stem_var <= 2.0:
        return ""
    return (f" Note the stem output variance is {r.stem_var:.3g}, not about 1: the expected curve and a "
            "unit residual variance assume a unit-variance signal (N(0,1) inputs; real images, whose "
            "smooth content zero-mean filters remove, give less).")


def find_problems(result: SPPResult) -> list[Finding]:
    """All findings for one result, non-finite values first (nothing else is meaningful then)."""
    values = [result.stem_var, *result.var, *result.sq_mean]
    if not all(math.isfinite(v) for v in values):
        i = _first([*result.var, *result.sq_mean], lambda v: not math.isfinite(v)) % len(result.var)
        return [Finding("nonfinite", i + 1, f"The signal is NaN or infinite from "
                                         f"{_at(result, i)} on; check the init and the input scale.")]
    checks = (_identity, _mean_shift, _variance, _expected, _residual, _gradients)
    found = [f for f in (check(result) for check in checks) if f is not None]
    note = _stem_note(result)
    return [Finding(f.kind, f.block, f.message + note) if f.kind in ("expected", "residual") else f
            for f in found]


def _summary(r: SPPResult) -> str:
    ratio = max(s / v for s, v in zip(r.sq_mean, r.var) if v > 0)
    parts = [f"squared mean up to {ratio:.1%} of the variance",
             f"variance {min(r.var):.3g}–{max(r.var):.3g}"]
    if r.deviation is not None:
        parts.append(f"at most {max(abs(d) for d in r.deviation):.0%} off the expected curve")
    res = [v for v in r.res_var if v is not None]
    if res:
        parts.append(f"residual variance {min(res):.3g}–{max(res):.3g}")
    if r.grad_norm is not None and r.grad_norm[-1] > 0:
        parts.append(f"gradient norm first/last block {r.grad_norm[0] / r.grad_norm[-1]:.3g}")
    return ", ".join(parts)


def diagnose(results: SPPResult | Sequence[SPPResult]) -> str:
    """A paragraph per model: a one-line summary of the numbers, then each finding (or 'no problems')."""
    lines = []
    for r in [results] if isinstance(results, SPPResult) else results:
        shape = "x".join(map(str, r.input_shape))
        head = f"{r.model} ({len(r.names)} blocks, input {shape}" + (
            f", step {r.step}" if r.step is not None else "") + ")"
        lines.append(f"{head}: {_summary(r)}.")
        problems = find_problems(r)
        lines += [f"  - {p.message}" for p in problems] or ["  - No problems found."]
    return "\n".join(lines)
