"""Compare models (e.g. NF vs its baselines) under one recipe: an SPP figure at init, a results table
from the training engine at several batch sizes and seeds, and the learning curves overlaid
(docs/baselines.md).

Every training run is a fresh process, so the peak memory of one run is not the high-water mark of
the runs before it, and each starts from the same state (threads, allocator, imports).
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import resource
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import torch
from tqdm.auto import tqdm

from ..analysis.measure import measure, write
from ..checks import POSITIVE_INT, Domain, check_number, check_out_dir
from ..errors import ConfigError, NormfreeError
from ..figures import accuracy_limits, data_label, legend_below, new_figure, save
from ..registry import get_entry, parse_model_spec
from .config import TrainConfig
from .data import parse_data_spec
from .metrics import read_metrics
from .rundir import holds_run

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLUMNS = ("model", "batch_size", "seed", "lr", "param_groups", "steps", "first_loss", "final_train_loss",
           "test_top1", "test_top5", "wall_time_s", "img_per_s", "peak_mem_mb", "load_avg_1m")
"""Columns of results.csv / results.json rows (results.md shows a readable subset)."""


def _train_one(cfg: TrainConfig) -> dict[str, Any]:
    """Child-process body: train, then report the summary, the first logged loss and peak memory."""
    from .trainer import Trainer

    load = os.getloadavg()[0]
    trainer = Trainer(cfg)
    summary = trainer.fit()
    records = [json.loads(line) for line in (Path(cfg.out_dir) / "metrics.jsonl").read_text().splitlines()]
    first = next(r for r in records if r.get("kind") == "step")
    if trainer.device.type == "cuda":
        peak, mem_kind = torch.cuda.max_memory_allocated(trainer.device) / 2**20, "cuda max allocated"
    else:
        peak, mem_kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process peak RSS"
    groups = trainer.opt.param_groups
    return {**summary, "first_loss": first["loss"], "first_loss_step": first["step"],
            "final_train_loss": summary["train_loss"], "peak_mem_mb": peak, "mem_kind": mem_kind,
            "param_groups": groups[0]["kind"], "lr_scales": [g["lr_scale"] for g in groups],
            "load_avg_1m": load}


def run_label(spec: str) -> str:
    """A file-name-safe label for a model spec (``nf_resnet50:width=2`` → ``nf_resnet50-width=2``)."""
    return "".join(c if c.isalnum() or c in "_-=." else "-" for c in spec)


def _spp_spec(spec: str, name: str, kwargs: dict[str, Any], skipinit_gain: float | None) -> str:
    """The spec for the SPP figure: NF nets (family ``nf*``) get ``skipinit_gain`` unless it is given."""
    entry = get_entry(name)
    if (skipinit_gain is None or not entry.family.startswith("nf") or "skipinit_gain" not in entry.options()
            or "skipinit_gain" in kwargs):
        return spec
    return f"{spec}{',' if ':' in spec else ':'}skipinit_gain={skipinit_gain}"


def compare(models: Sequence[str], data: str, out: str | Path, *, batch_sizes: Sequence[int] = (128, 8),
            epochs: int = 2, lr: float = 0.1, lr_batch: int = 128, train_subset: int = 0,
            test_subset: int = 0, spp_batch: int = 16, spp_skipinit_gain: float | None = None,
            seed: int | Sequence[int] = 0, device: str = "auto", **train_kwargs: Any) -> list[dict[str, Any]]:
    """SPP figure of every model at init (``out/spp.png``) and one training run per model, batch size
    and seed with the same recipe (``out/runs/<model>_bs<B>/``, ``..._bs<B>_seed<S>/`` with several
    seeds); the table goes to ``out/results.{md,csv,json}``, the test top-1 per epoch of every run to
    ``out/curves.png`` (one panel per batch size, one line per model: the mean over seeds, with the
    min–max band when there are several).

    ``models`` are specs ``NAME[:key=value,...]`` as for ``normfree spp``. The peak lr is
    ``lr · B / lr_batch`` at batch B (linear scaling); the epochs and images are the same at every
    batch. Each model trains with the optimizer groups its paper prescribes (``param_groups="auto"``:
    Fixup's scalars at lr/10, revisited BN's scales at lr/100). ``spp_skipinit_gain`` sets, for the
    figure only, the initial skip gain of the NF nets (registry family ``nf*``), whose official 0
    makes every block the identity at init; SkipInit's 0 and Fixup's 1 define them and are kept.
    ``train_kwargs`` are further :class:`TrainConfig` fields. A run that fails (a diverged loss) gets
    a row with its error and NaN numbers; the others still run. The SPP figure uses the first seed.
    """
    parsed, labels = _check_models(models, batch_sizes)
    seeds = [seed] if isinstance(seed, int) else list(seed)
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seed needs one or more distinct seeds, got {seeds}")
    check_number("--lr-batch", lr_batch, POSITIVE_INT)
    check_number("--spp-batch-size", spp_batch, Domain(integer=True, low=2))
    runs = [(b, spec, name, kwargs, f"{label}_bs{b}" + (f"_seed{s}" if len(seeds) > 1 else ""), s)
            for b in batch_sizes for s in seeds for spec, (name, kwargs), label in zip(models, parsed, labels)]
    configs = [TrainConfig.from_dict({  # every value checked before the first run starts
        "log_every": 1, **train_kwargs, "model": name, "model_kwargs": kwargs, "data": data,
        "out_dir": str(Path(out) / "runs" / run), "epochs": epochs, "batch_size": b,
        "lr": lr * b / lr_batch, "train_subset": train_subset, "test_subset": test_subset, "seed": s,
        "device": device, "param_groups": "auto"}) for b, spec, name, kwargs, run, s in runs]
    parse_data_spec(data)
    taken = [c.out_dir for c in configs if holds_run(Path(c.out_dir))]
    if taken:
        raise ConfigError(f"--out-dir {out} already holds a comparison (runs such as {taken[0]}); choose another "
                          "--out-dir so the new table does not mix with the old runs")
    out = check_out_dir("--out-dir", out)

    spp_specs = [_spp_spec(spec, name, kw, spp_skipinit_gain) for spec, (name, kw) in zip(models, parsed)]
    spp_device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    results = measure(spp_specs, batch=spp_batch, seed=seeds[0], device=spp_device)
    write(results, out, title=f"signal propagation at init, N(0,1) inputs, batch {spp_batch}")

    rows = []
    for (_b, spec, *_), cfg in tqdm(list(zip(runs, configs)), desc="compare", unit="run"):
        rows.append(_run_row(spec, cfg))
    settings = {"data": data, "epochs": epochs, "batch_sizes": list(batch_sizes), "lr": lr,
                "lr_batch": lr_batch, "train_subset": train_subset, "test_subset": test_subset,
                "seed": seeds[0] if len(seeds) == 1 else seeds, "device": device, "train_kwargs": train_kwargs,
                "spp_models": spp_specs, **_machine()}
    write_table(rows, settings, out)
    plot_curves(rows, out / "curves.png", title=f"test top-1 per epoch, {data_label(data)}, train subset "
                f"{train_subset or 'all'}, lr {lr} × batch / {lr_batch}")
    return rows


def _check_models(models: Sequence[str], batch_sizes: Sequence[int]
                  ) -> tuple[list[tuple[str, dict[str, Any]]], list[str]]:
    """Parsed specs and run labels; every name and batch size is checked before any run starts."""
    if not models:
        raise NormfreeError("give at least one model to compare")
    if not batch_sizes:
        raise ConfigError("give at least one batch size")
    for b in batch_sizes:
        check_number("--batch-size", b, POSITIVE_INT)
    parsed = [parse_model_spec(s) for s in models]
    for name, _ in parsed:
        get_entry(name)
    labels = [run_label(s) for s in models]
    if len(set(labels)) != len(labels):
        raise NormfreeError(f"the models {list(models)} are not distinct")
    return parsed, labels


def _run_row(spec: str, cfg: TrainConfig) -> dict[str, Any]:
    """One training run in a fresh spawned process, as a table row; a run that fails with a
    ``NormfreeError`` (a diverged loss) is a row with its error and NaN numbers."""
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        try:
            result = pool.submit(_train_one, cfg).result()
        except NormfreeError as err:  # a result of the comparison, not a crash
            result = {**dict.fromkeys(COLUMNS, float("nan")), "param_groups": "", "error": str(err)}
            tqdm.write(f"{spec} batch {cfg.batch_size}: failed: {err}")
    row = {**{k: result.get(k) for k in COLUMNS}, "model": spec, "batch_size": cfg.batch_size,
           "seed": cfg.seed, "lr": cfg.lr,
           "mem_kind": result.get("mem_kind", ""), "lr_scales": result.get("lr_scales"),
           "error": result.get("error", ""), "run_dir": cfg.out_dir}
    if not row["error"]:
        tqdm.write(f"{spec} batch {cfg.batch_size}: loss {result['first_loss']:.3f} -> "
                   f"{result['final_train_loss']:.3f}, top-1 {result['test_top1']:.2f}%, "
                   f"{result['img_per_s']:.1f} img/s")
    return row


def _machine() -> dict[str, Any]:
    """When and where the comparison ran (the table's provenance)."""
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "torch": torch.__version__,
            "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


def write_table(rows: Sequence[dict[str, Any]], settings: dict[str, Any], out: Path) -> list[Path]:
    """results.json (settings + rows), results.csv (rows) and results.md (a readable table)."""
    paths = [out / "results.json", out / "results.csv", out / "results.md"]
    paths[0].write_text(json.dumps({"settings": settings, "rows": list(rows)}, indent=2))
    with paths[1].open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    mem = rows[0]["mem_kind"] if rows else ""

    def num(v: float, digits: int) -> str:
        return f"{v:.{digits}f}" if math.isfinite(v) else str(v)

    lines = [f"| model | batch | seed | lr | param groups | test top-1 (%) | train loss first → last | wall (s) "
             f"| img/s | peak mem (MB, {mem}) |", "|---|---:|---:|---:|---|---:|---|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['batch_size']} | {r['seed']} | {r['lr']:.4g} | {r['param_groups']} | "
              f"{num(r['test_top1'], 2)} | {num(r['first_loss'], 3)} → {num(r['final_train_loss'], 3)} | "
              f"{num(r['wall_time_s'], 1)} | {num(r['img_per_s'], 1)} | {num(r['peak_mem_mb'], 0)} |"
              if not r.get("error") else f"| {r['model']} | {r['batch_size']} | {r['seed']} | {r['lr']:.4g} | failed: "
              f"{r['error'][:120]} | | | | | |" for r in rows]
    budget = (f"data {settings['data']}, {settings['epochs']} epoch(s), train subset "
              f"{settings['train_subset'] or 'all'}, test subset {settings['test_subset'] or 'all'}, "
              f"lr {settings['lr']} × batch / {settings['lr_batch']}, seed(s) {settings['seed']}, "
              f"{settings['date_utc']} UTC, torch {settings['torch']}")
    paths[2].write_text("\n".join([f"Budget: {budget}.", "", *lines, ""]))
    return paths


def _curves(rows: Sequence[dict[str, Any]]) -> dict[int, dict[str, list[list[tuple[float, float]]]]]:
    """batch size → model → one (epoch, test top-1) list per seed, read from each run's metrics.jsonl."""
    curves: dict[int, dict[str, list[list[tuple[float, float]]]]] = {}
    for r in rows:
        pts = [(m["epoch"], m["test_top1"]) for m in read_metrics(Path(r["run_dir"]) / "metrics.jsonl")
               if m.get("kind") == "epoch" and "test_top1" in m]
        if pts:
            curves.setdefault(r["batch_size"], {}).setdefault(r["model"], []).append(pts)
    return curves


def curves_figure(rows: Sequence[dict[str, Any]], title: str = "") -> Figure:
    """Test top-1 against epoch, one panel per batch size and one line per model: the mean over seeds
    (epochs every seed reached), and the min–max band when there are several seeds. Failed runs have
    no points and are left out; the legend sits under the panels."""
    curves = _curves(rows)
    if not curves:
        raise ConfigError("no learning curves: no run logged a test accuracy")
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig = new_figure(max(8.0, 5.2 * len(curves)), 4.4 + 0.2 * len(models))
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    seeds = 1
    for ax, (batch, by_model) in zip(axes, sorted(curves.items(), reverse=True)):
        shown: list[float] = []
        for model, runs in by_model.items():
            epochs = sorted(set.intersection(*[{e for e, _ in pts} for pts in runs]))
            per_epoch = [[dict(pts)[e] for pts in runs] for e in epochs]
            color = f"C{models.index(model)}"
            ax.plot(epochs, [sum(v) / len(v) for v in per_epoch], "-o", ms=4, color=color, label=model)
            if len(runs) > 1:
                ax.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch], color=color,
                                alpha=0.2, lw=0)
            shown += [x for v in per_epoch for x in v]
            seeds = max(seeds, len(runs))
        ax.set(xlabel="epoch", ylabel="test top-1 (%)", title=f"batch {batch}", ylim=accuracy_limits(shown))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    legend_below(fig, axes, max_cols=2)
    about = f"lines: mean over {seeds} seeds, bands: min–max" if seeds > 1 else "one seed"
    fig.suptitle(f"{title}\n{about}" if title else about)
    return fig


def plot_curves(rows: Sequence[dict[str, Any]], path: str | Path, title: str = "") -> Path | None:
    """Write :func:`curves_figure` of the comparison's rows to ``path``; None when every run failed."""
    if not _curves(rows):
        return None
    return save(curves_figure(rows, title), path)

