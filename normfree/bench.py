"""Throughput, latency and peak memory of models, measured side by side in one process.

Protocol: build every model, warm up each, then run ``repeats`` rounds; in each round every model runs
``steps`` timed steps in turn (interleaved, so load from other processes hits all models alike).
Reported: median and range over rounds of images/s, median latency per batch, and the peak memory
of one extra step measured afterwards (see :func:`step_peak_memory`).
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

Mode = Literal["train", "infer"]


@dataclass
class BenchResult:
    """One model's numbers. Memory in bytes; ``resident`` = parameters + buffers (+ optimizer state)."""

    name: str
    images_per_s: float
    images_per_s_min: float
    images_per_s_max: float
    latency_ms: float
    peak_step_bytes: int
    resident_bytes: int
    round_images_per_s: list[float] = field(default_factory=list)  # in round order

    def ratio(self, baseline: "BenchResult") -> float:
        """Throughput relative to ``baseline`` (medians)."""
        return self.images_per_s / baseline.images_per_s

    def round_ratios(self, baseline: "BenchResult") -> list[float]:
        """Throughput relative to ``baseline`` round by round: adjacent in time, so paired under load."""
        return [a / b for a, b in zip(self.round_images_per_s, baseline.round_images_per_s)]


@dataclass(frozen=True)
class BenchConfig:
    """What to run. ``channels_last``/``amp`` default to on for CUDA and off for CPU."""

    mode: Mode = "train"
    batch: int = 8
    size: int = 224
    in_chans: int = 3
    device: str = "cpu"
    compile: str | None = None  # a torch.compile backend, e.g. "inductor"
    channels_last: bool | None = None
    amp: bool | None = None
    warmup: int = 2
    repeats: int = 5
    steps: int = 3

    @property
    def is_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @property
    def use_channels_last(self) -> bool:
        return self.is_cuda if self.channels_last is None else self.channels_last

    @property
    def use_amp(self) -> bool:
        return self.is_cuda if self.amp is None else self.amp


def _sync(device: torch.device) -> None:
    """Only at timing boundaries: the models' forward/backward never synchronize."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model: nn.Module, cfg: BenchConfig) -> tuple[Callable[[], None], int]:
    """Prepare ``model`` per ``cfg``; return (one step, resident bytes)."""
    device = torch.device(cfg.device)
    fmt = torch.channels_last if cfg.use_channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=fmt).train(cfg.mode == "train")
    runner = torch.compile(model, backend=cfg.compile) if cfg.compile else model
    x = torch.randn(cfg.batch, cfg.in_chans, cfg.size, cfg.size, device=device).to(memory_format=fmt)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if cfg.use_amp
           else contextlib.nullcontext())
    resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    if cfg.mode == "infer":
        def step() -> None:
            with torch.inference_mode(), amp:
                runner(x)
        return step, resident

    num_classes = getattr(model, "num_classes", 1000)
    y = torch.randint(0, num_classes, (cfg.batch,), device=device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    resident *= 2  # SGD momentum buffer per parameter (buffers over-count slightly: BN stats)

    def train_step() -> None:
        with amp:
            loss = F.cross_entropy(runner(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)  # gradients are allocated inside the step: they count
    return train_step, resident


def step_peak_memory(step: Callable[[], None], device: torch.device) -> int:
    """Peak bytes allocated during one step above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated`` minus ``memory_allocated`` at the start. CPU: the maximum
    of the running sum of bytes allocated minus freed by PyTorch's CPU allocator, from
    ``torch.profiler(profile_memory=True)`` events in start order (no RSS, no allocator caching; a
    single op's internal transient counts net).
    """
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        _sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as prof:
        step()
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak


def run_benchmark(models: dict[str, nn.Module], cfg: BenchConfig,
                  progress: bool = True) -> list[BenchResult]:
    """Benchmark ``models`` (name → module) with the interleaved protocol of this module."""
    device = torch.device(cfg.device)
    prepared = {name: make_step(m, cfg) for name, m in models.items()}
    total = len(prepared) * (cfg.warmup + cfg.repeats * cfg.steps)
    times: dict[str, list[float]] = {name: [] for name in prepared}
    with tqdm(total=total, desc=f"bench {cfg.mode}", unit="step", disable=not progress) as bar:
        for step, _ in prepared.values():
            for _ in range(cfg.warmup):
                step()
                bar.update()
        for _ in range(cfg.repeats):
            for name, (step, _) in prepared.items():
                _sync(device)
                start = time.perf_counter()
                for _ in range(cfg.steps):
                    step()
                _sync(device)
                times[name].append((time.perf_counter() - start) / cfg.steps)
                bar.update(cfg.steps)
    results = []
    for name, (step, resident) in prepared.items():
        rates = [cfg.batch / t for t in times[name]]
        results.append(BenchResult(name, statistics.median(rates), min(rates), max(rates),
                                   1e3 * statistics.median(times[name]),
                                   step_peak_memory(step, device), resident, rates))
    return results
