"""Resource sanity before allocation: a model or batch far beyond the machine fails at once, with the
estimate in the message, instead of swapping for minutes or being killed by the OOM killer.

Estimates come from building the model (and running a forward pass) on PyTorch's ``meta`` device,
which records shapes without allocating memory. ``NORMFREE_SKIP_RESOURCE_CHECK=1`` turns the checks
off for users who know better (memory that ``/proc/meminfo`` does not report, swap on purpose).
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .errors import ConfigError, ModelSpecError

SKIP_ENV = "NORMFREE_SKIP_RESOURCE_CHECK"


def skipped() -> bool:
    return os.environ.get(SKIP_ENV, "") not in ("", "0")


def available_bytes(device: str | torch.device = "cpu") -> int:
    """Free memory of ``device``: CUDA's free bytes, else the host's MemAvailable (total RAM if unknown)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """Numeric model options must be finite (``width=1e400`` is ``inf``, not a large model)."""
    for key, value in kwargs.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ModelSpecError(f"{name}: model option {key}={value!r} is not a finite number")


class _SkipRandomInit(TorchFunctionMode):
    """Initializers (``torch.nn.init.*`` and random in-place fills) return their tensor unchanged: on the
    meta device there are no values to draw, and torch's meta ``normal_`` imports the compiler stack
    (seconds) on first use."""

    SKIPPED = frozenset({torch.Tensor.normal_, torch.Tensor.uniform_})

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        if func in self.SKIPPED or getattr(func, "__module__", "") == "torch.nn.init":
            return args[0] if args else (kwargs or {})["tensor"]
        return func(*args, **(kwargs or {}))


def check_model_size(name: str, build: Callable[[], nn.Module], kwargs: dict[str, Any]) -> None:
    """Build on the meta device first; refuse when the parameters alone exceed the host's free memory."""
    check_model_kwargs(name, kwargs)
    if skipped() or torch.get_default_device().type == "meta":  # a meta build allocates nothing
        return
    try:
        with torch.device("meta"), _SkipRandomInit():
            model = build()
    except ArithmeticError as err:  # a division by zero / overflow from an option value out of range
        raise ModelSpecError(f"{name}: model options {kwargs} are out of range ({type(err).__name__}: "
                             f"{err})") from None
    except (RuntimeError, NotImplementedError):  # a builder that needs real tensors: no estimate
        return
    params = sum(p.numel() for p in model.parameters())
    need, free = 4 * params, available_bytes()
    if need > free:
        raise ModelSpecError(f"{name} with {kwargs or 'its defaults'} has {params:.3g} parameters "
                             f"({gib(need)} in float32) but only {gib(free)} of memory is free; choose "
                             f"smaller options (set {SKIP_ENV}=1 to build it anyway)")


def estimate_bytes(model: nn.Module, input_shape: tuple[int, ...], training: bool) -> tuple[int, int] | None:
    """``(parameter bytes, activation bytes)`` for one forward pass of ``input_shape`` (float32), from a
    meta-device copy: training keeps every module's output for backward (their sum), inference about
    three of the largest. None when the model cannot run on the meta device."""
    outputs: list[int] = []

    def hook(_m: nn.Module, _i: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            outputs.append(out.numel() * out.element_size())

    batch = input_shape[0]
    memo: dict[int, Any] = {id(t): (nn.Parameter(t.to("meta"), t.requires_grad) if isinstance(t, nn.Parameter)
                                    else t.to("meta")) for t in [*model.parameters(), *model.buffers()]}
    meta = copy.deepcopy(model, memo)  # tensors map to meta copies: no data is copied
    for m in meta.modules():  # the leaf hooks below see every layer only on a block's plain path
        if hasattr(m, "fast_path"):
            m.fast_path = False
    handles = [m.register_forward_hook(hook) for m in meta.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            meta(torch.empty((min(batch, 2), *input_shape[1:]), device="meta"))
    except NotImplementedError:
        return None
    finally:
        for h in handles:
            h.remove()
    scale = batch / min(batch, 2)
    acts = sum(outputs) if training else 3 * max(outputs, default=0)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    inputs = math.prod(input_shape) * 4
    return params, int(acts * scale) + inputs


FAR = 2
"""A batch is refused when its estimate exceeds this many times the free memory: activation estimates
are upper bounds (float32, every output kept), so only batches far beyond the machine fail."""


def check_batch_fits(model: nn.Module, input_shape: tuple[int, ...], device: str | torch.device,
                     training: bool, what: str = "--batch-size") -> None:
    """Refuse a batch whose estimated memory is far beyond ``device``'s free memory (one line, with the numbers);
    an input too small for the model's downsampling is reported as the option error it is."""
    if skipped():
        return
    try:
        est = estimate_bytes(model, input_shape, training)
    except RuntimeError as err:
        raise ConfigError(f"input of shape {tuple(input_shape)} does not fit "
                          f"{getattr(model, 'model_name', type(model).__name__)}: "
                          f"{' '.join(str(err).split())[:200]}") from None
    if est is None:
        return
    params, acts = est
    free = available_bytes(device)
    if params + acts > FAR * free:
        raise ConfigError(f"{what} {input_shape[0]} at {input_shape[-2]}x{input_shape[-1]} needs about "
                          f"{gib(params + acts)} ({gib(params)} parameters, {gib(acts)} activations) but "
                          f"{device} has {gib(free)} free; lower {what} (set {SKIP_ENV}=1 to try anyway)")
