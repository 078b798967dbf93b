"""Run the CIFAR-10 NF-vs-BN plan (plan.yaml) as resumable lanes.

Each lane takes the next run of the plan that is neither finished nor held by a live lane, trains it
with ``normfree train`` (resuming from its ``last.safetensors`` if an earlier lane was interrupted) and
moves on. Start as many lanes as there are cores to spare; re-running a lane after an interruption picks
up exactly where the plan stopped.

Usage (repository root)::

    DATA_DIR=path/to/cifar10_npz_dir OMP_NUM_THREADS=1 python benchmarks/cifar10_nf_vs_bn/lanes.py
    python benchmarks/cifar10_nf_vs_bn/lanes.py --list          # every run and its state
    python benchmarks/cifar10_nf_vs_bn/lanes.py --stage ablation --device cuda
    ... lanes.py --until 10:35     # start no run that would not finish by 10:35 (see ``fits``)

``DATA_DIR`` holds ``train.npz``/``test.npz`` (uint8 NHWC ``x``, int64 ``y``). Runs write into
``exp/<table>/<name>_s<seed>/`` (config, JSONL metrics, stdout, summary; checkpoints are not committed).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

HERE = Path(__file__).resolve().parent
EXP = HERE / "exp"


def expand(plan: dict[str, Any], stage: str | None = None, exp: Path = EXP) -> Iterator[dict[str, Any]]:
    """The plan's runs in execution order: stage by stage, and within a stage every entry's first seed
    before any entry's second seed (so a partial stage already covers every cell once). Each run's
    folder is ``exp/<table>/<name>_s<seed>``. A stage marked ``hold: true`` is listed but not run (unless
    named by ``stage``): a gate that waits for a decision, such as the recipes a headline uses. A stage's
    optional ``minutes`` is its runs' expected wall time until one of its table's runs has finished."""
    for st in plan["stages"]:
        if stage and st["name"] != stage:
            continue
        held = bool(st.get("hold")) and not stage
        entries = st["runs"]
        for rank in range(max(len(e["seeds"]) for e in entries)):
            for e in entries:
                if rank < len(e["seeds"]):
                    seed = e["seeds"][rank]
                    values = {**plan.get("common", {}), **st.get("common", {}), **e.get("set", {}), "seed": seed}
                    yield {"table": st["table"], "name": e["name"], "recipe": e["recipe"], "seed": seed,
                           "values": values, "dir": exp / st["table"] / f"{e['name']}_s{seed}", "hold": held,
                           "minutes": st.get("minutes")}


INTERRUPTED = (130, -2, -9, -15)  # Ctrl-C, SIGINT, SIGKILL, SIGTERM: resume later; other failures are final


def finished(run_dir: Path) -> bool:
    """Trained to its last epoch, or failed for good (``failed`` holds the exit status)."""
    if (run_dir / "failed").exists():
        return True
    path = run_dir / "summary.json"
    if not path.exists():
        return False
    summary = json.loads(path.read_text())
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    return summary.get("epochs_done", 0) >= cfg["epochs"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(run_dir: Path) -> bool:
    """Take the run's lock file unless a live process holds it (a dead holder's lock is stale)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / ".lane.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def flags(values: dict[str, Any]) -> list[str]:
    out = []
    for key, value in values.items():
        flag = key.replace("_", "-")
        if isinstance(value, bool):
            out.append(f"--{flag}" if value else f"--no-{flag}")
        else:
            out += ["--" + flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return out


def command(run: dict[str, Any], data: str, device: str) -> list[str]:
    cmd = [sys.executable, "-m", "normfree.cli", "train", "--recipe", run["recipe"], "--data", data,
           "--device", device, "--out-dir", os.path.relpath(run["dir"]), *flags(run["values"])]
    last = run["dir"] / "last.safetensors"  # relative paths: the logs name no machine's folders
    return cmd + (["--resume", os.path.relpath(last)] if last.exists() else [])


def run_logged(cmd: list[str], log_path: Path, env: dict[str, str]) -> int:
    """Run ``cmd`` appending its output to ``log_path`` without the progress bars' redraws.

    Source paths in warnings are made relative (to the working directory or the package snapshot on
    ``PYTHONPATH``) so a committed log names no machine's folders.
    """
    roots = [os.getcwd(), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    prefixes = sorted({os.path.abspath(r).rstrip(os.sep) + os.sep for r in roots}, key=len, reverse=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    with open(log_path, "a") as log:
        for line in proc.stdout:
            for part in line.decode(errors="replace").replace("\r", "\n").splitlines():
                if part.strip() and "%|" not in part:
                    for prefix in prefixes:
                        part = part.replace(prefix, "")
                    log.write(part + "\n")
                    log.flush()
    return proc.wait()


def state(run: dict[str, Any]) -> str:
    if run.get("hold") and not (run["dir"] / "last.safetensors").exists():
        return "held"
    if (run["dir"] / "failed").exists():
        return "failed"
    if finished(run["dir"]):
        return "done"
    if (run["dir"] / "last.safetensors").exists():
        return "partial"
    return "todo"


def data_dir() -> str | None:
    """``$DATA_DIR`` as a relative path (so logs name no machine's folders), or None (with a message) when
    it does not hold the CIFAR-10 arrays."""
    path = os.environ.get("DATA_DIR")
    if not path or not (Path(path) / "train.npz").exists():
        print("set DATA_DIR to a folder holding train.npz and test.npz", file=sys.stderr)
        return None
    return os.path.relpath(path)


Runs = list[dict[str, Any]]


def wall_seconds(run_dir: Path) -> float | None:
    """A finished run's wall time, from its ``summary.json`` (``normfree train``) or ``result.json``
    (``normfree speedrun``); None when it has neither."""
    for name, key in (("summary.json", "total_wall_time_s"), ("result.json", "wall_s")):
        path = run_dir / name
        if path.exists():
            value = json.loads(path.read_text()).get(key)
            if value is not None:
                return float(value)
    return None


def expected_seconds(run: dict[str, Any], runs: Runs, state_of: Callable[[dict[str, Any]], str] = state
                     ) -> float | None:
    """How long ``run`` should take: the median wall time of its table's finished runs (a table is one
    budget: epochs, batch and data), else its stage's ``minutes``, else None (unknown)."""
    walls = [w for r in runs if r["table"] == run["table"] and state_of(r) == "done"
             and (w := wall_seconds(r["dir"])) is not None]
    if walls:
        return statistics.median(walls)
    return 60.0 * run["minutes"] if run.get("minutes") else None


Estimate = Callable[[dict[str, Any], Runs, Callable[[dict[str, Any]], str]], float | None]


def fits(run: dict[str, Any], runs: Runs, deadline: float | None, state_of: Callable[[dict[str, Any]], str] = state,
         expected: Estimate = expected_seconds) -> bool:
    """Whether ``run`` should finish before ``deadline`` (epoch seconds), with a 10 % margin, by the
    ``expected`` estimate. A lane that stops with its machine loses an unfinished run's progress when the
    checkpoints do not survive, so near the end a lane skips to shorter runs instead. Unknown durations
    and no deadline always fit."""
    if deadline is None:
        return True
    need = expected(run, runs, state_of)
    return need is None or time.time() + 1.1 * need <= deadline


def parse_until(text: str | None) -> float | None:
    """``HH:MM`` (local time, the next such moment) as epoch seconds; None (no deadline) for None."""
    if text is None:
        return None
    try:
        at = dt.datetime.combine(dt.date.today(), dt.time.fromisoformat(text))
    except ValueError:
        raise SystemExit(f"--until takes HH:MM, not {text!r}") from None
    if at <= dt.datetime.now():
        at += dt.timedelta(days=1)
    return at.timestamp()


def run_plan(runs: Runs | Callable[[], Runs], command_of: Callable[[dict[str, Any]], list[str]],
             state_of: Callable[[dict[str, Any]], str] = state, label: Callable[[dict[str, Any]], str] | None = None,
             after: Callable[[dict[str, Any]], None] | None = None, deadline: float | None = None,
             expected: Estimate = expected_seconds) -> int:
    """The lane loop shared by every benchmark: take the first run that is neither done, failed, held nor
    claimed by a live lane (and, with a ``deadline``, expected to finish before it: see ``fits``), run its
    command (output to the run's ``stdout.log``), mark a final failure, call ``after`` on success, and
    repeat; stop (returning the status) when a run was interrupted, so a later lane resumes it. ``runs``
    may be a function, called again before each claim, so edits to the plan (a released hold, a new cell)
    reach lanes that are already running."""
    runs_of = runs if callable(runs) else lambda: runs
    label = label or (lambda r: f"{r['table']}/{r['dir'].name}")
    tried: set[Path] = set()  # each run at most once per lane
    while True:
        plan = runs_of()
        open_runs = [r for r in plan if r["dir"] not in tried and not r.get("hold")
                     and state_of(r) not in ("done", "failed")]
        run = next((r for r in open_runs if fits(r, plan, deadline, state_of, expected) and claim(r["dir"])), None)
        if run is None:
            if open_runs and deadline is not None:
                print(f"[{time.strftime('%H:%M:%S')}] no open run is expected to finish by "
                      f"{time.strftime('%H:%M', time.localtime(deadline))}; lane stops", flush=True)
            return 0
        tried.add(run["dir"])
        cmd = command_of(run)
        print(f"[{time.strftime('%H:%M:%S')}] {label(run)}: normfree {' '.join(cmd[3:])}", flush=True)
        rc = run_logged(cmd, run["dir"] / "stdout.log", dict(os.environ))
        (run["dir"] / ".lane.lock").unlink(missing_ok=True)
        print(f"[{time.strftime('%H:%M:%S')}] {label(run)}: exit {rc}", flush=True)
        if rc in INTERRUPTED:
            return rc
        if rc:
            (run["dir"] / "failed").write_text(f"{rc}\n")
        elif after:
            after(run)


def main(argv: list[str] | None = None, plan: Path = HERE / "plan.yaml", exp: Path = EXP) -> int:
    """The lane command line; other benchmarks call it with their own ``plan`` and ``exp`` defaults."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--plan", default=str(plan))
    parser.add_argument("--exp", default=str(exp), help="folder of the run folders")
    parser.add_argument("--stage", help="run only this stage of the plan")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--list", action="store_true", help="print every run with its state and exit")
    parser.add_argument("--until", help="HH:MM: start only runs expected to finish by then")
    args = parser.parse_args(argv)

    def runs() -> Runs:
        return list(expand(yaml.safe_load(Path(args.plan).read_text()), args.stage, Path(args.exp)))

    if args.list:
        for r in runs():
            print(f"{state(r):8s} {r['table']}/{r['dir'].name}")
        return 0
    data = data_dir()
    if data is None:
        return 2
    return run_plan(runs, lambda r: command(r, f"npz:{data}", args.device),
                    deadline=parse_until(args.until))


if __name__ == "__main__":
    sys.exit(main())
