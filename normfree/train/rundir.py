"""One run per folder: what a run folder holds, when training into it is allowed, which config changes a
resume may make, and the bookkeeping that keeps ``metrics.jsonl`` one record per step across resumes.

Policy (docs/reliability.md): a folder *holds a run* when it has ``last.safetensors`` or ``summary.json``.
``normfree train`` into such a folder refuses unless ``--resume`` continues that run or ``--overwrite``
moves it aside (to ``DIR.old-N``) first. Other files (a lane runner's ``.lane.lock``, ``stdout.log``)
do not make a run; the leftovers of an attempt that died before its first ``last`` checkpoint
(``config.yaml``, ``metrics.jsonl``, ``best.safetensors``, ``tb/``, ``spp/``) hold nothing resumable and are
cleared with a warning.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..safeio import atomic_write_text, clean_stale_temps
from .config import TrainConfig

CHECKPOINTS = ("last.safetensors", "best.safetensors")
RUN_MARKERS = ("last.safetensors", "summary.json")
"""Files that make a folder hold a run (a ``best`` alone is from an attempt killed at its first epoch end,
before ``last`` was written: nothing to resume)."""
RUN_FILES = (*RUN_MARKERS, "config.yaml", "metrics.jsonl", "plot.png", "tb", "spp")
"""Everything a run writes into its folder (moved together by ``--overwrite``)."""
RESUME_SAFE = frozenset({"epochs", "out_dir", "device", "eval_every", "log_every", "eval_batch_size",
                         "spp_every", "tta_flip", "compile", "amp", "channels_last", "grad_checkpointing",
                         "test_subset", "divergence", "divergence_factor", "divergence_patience"})
"""Config fields a resume may change: where and how fast it runs, how often it evaluates and logs, and
how long it trains; the others define the trajectory (a changed one would silently mix two runs)."""


def holds_run(folder: Path) -> bool:
    return any((folder / name).exists() for name in RUN_MARKERS)


def prepare_run_dir(folder: Path, resume: str | Path | None, overwrite: bool) -> None:
    """Apply the one-run-per-folder policy to ``folder`` before a run writes there (main rank only)."""
    clean_stale_temps(folder, (*CHECKPOINTS, "summary.json", "config.yaml", "metrics.jsonl"))
    if resume is not None and Path(resume).resolve().parent == folder.resolve():
        return  # continuing the run that lives here
    if holds_run(folder):
        if not overwrite:
            how = ("resume that run with --resume " + str(folder / "last.safetensors")
                   if (folder / "last.safetensors").exists() else "choose another --out-dir")
            raise ConfigError(f"--out-dir {folder} already holds a run; {how}, or pass --overwrite to move "
                              f"it aside to {_aside(folder)} and start anew")
        aside = _aside(folder)
        aside.mkdir()
        for name in RUN_FILES:
            if (folder / name).exists():
                shutil.move(str(folder / name), aside / name)
        warnings.warn(f"moved the run in {folder} to {aside}", stacklevel=3)
        return
    leftovers = [name for name in RUN_FILES if (folder / name).exists()]
    if leftovers:
        warnings.warn(f"{folder} holds {', '.join(leftovers)} of an attempt that wrote no checkpoint; "
                      "clearing them and starting anew", stacklevel=3)
        for name in leftovers:
            target = folder / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()


def _aside(folder: Path) -> Path:
    n = 1
    while folder.with_name(f"{folder.name}.old-{n}").exists():
        n += 1
    return folder.with_name(f"{folder.name}.old-{n}")


def check_resume(cfg: TrainConfig, meta: dict[str, Any], path: str | Path) -> None:
    """Refuse a resume whose config changes a field that is not :data:`RESUME_SAFE`, listing them all,
    or whose ``epochs`` is below what the checkpoint already trained."""
    saved = {**TrainConfig().to_dict(), **meta.get("config", {})}
    given = cfg.to_dict()
    changed = sorted(k for k in given if k not in RESUME_SAFE and given[k] != saved.get(k))
    if changed:
        diff = ", ".join(f"{k}: {saved.get(k)!r} -> {given[k]!r}" for k in changed)
        raise ConfigError(f"--resume {path}: the config differs from the checkpoint's in {diff}; a resume may "
                          f"only change {', '.join(sorted(RESUME_SAFE))}. Start a new run (another --out-dir) "
                          "for the others")
    done = float(meta.get("epoch", 0))
    if cfg.epochs < done:
        raise ConfigError(f"--resume {path}: epochs (--epochs) = {cfg.epochs} but the checkpoint has already "
                          f"trained {done:g} epochs; pass --epochs {int(-(-done // 1))} or more")


def trim_metrics(path: Path, step: int, drop_epoch_at_step: bool) -> None:
    """Keep the records of ``metrics.jsonl`` up to ``step`` (those after it were logged by a process that
    died before its next checkpoint and will be logged again), so each step appears once. An epoch
    record at ``step`` goes too when that epoch's evaluation is about to be redone."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill mid-write
            continue
        s = rec.get("step", 0) if isinstance(rec, dict) else step + 1
        if s < step or (s == step and not (drop_epoch_at_step and rec.get("kind") == "epoch")):
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


@dataclass
class Progress:
    """Where a run is inside its current epoch, saved in every checkpoint so that a resume continues the
    epoch's train-loss mean and the divergence watch exactly, and redoes an epoch end (evaluation, best
    checkpoint, epoch record) that an interrupt cut short."""

    epoch_pending: bool = False   # the epoch's last step is done but its end-of-epoch work is not
    loss_sum: float = 0.0         # over this epoch's steps so far
    loss_count: int = 0
    seconds: float = 0.0          # training time of this epoch so far
    loss_start: float | None = None  # the run's first training loss (divergence reference)
    above: int = 0                # steps in a row above the divergence level
    metrics: dict[str, Any] = field(default_factory=dict)  # the last epoch record

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> "Progress":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.get("progress", {}).items() if k in known},
                   metrics=meta.get("metrics") or {})

    def to_meta(self) -> dict[str, Any]:
        return {"progress": {k: v for k, v in dataclasses.asdict(self).items() if k != "metrics"},
                "metrics": self.metrics}
