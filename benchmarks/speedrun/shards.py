"""Split an npz CIFAR-10 folder into parts small enough for a size-limited transfer, and join them again.

    python benchmarks/speedrun/shards.py split DATA_DIR OUT_DIR [--max-mb 50]   # OUT_DIR/part0, part1, ...
    python benchmarks/speedrun/shards.py join PARTS_DIR DATA_DIR                # train.npz, test.npz again

Each part holds whole ``{split}_{k}.npz`` chunks (uncompressed: CIFAR pixels barely compress); ``join``
reads every chunk under PARTS_DIR (any folder layout) and concatenates them in chunk order.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def split(src: Path, dest: Path, max_mb: float) -> None:
    per_image = 32 * 32 * 3 + 8
    chunk = int(max_mb * 2**20 // per_image)
    part, used = 0, 0
    for name in ("train", "test"):
        with np.load(src / f"{name}.npz") as f:
            x, y = f["x"], f["y"]
        for k, start in enumerate(range(0, len(y), chunk)):
            size = min(chunk, len(y) - start) * per_image
            if used and used + size > max_mb * 2**20:
                part, used = part + 1, 0
            folder = dest / f"part{part}"
            folder.mkdir(parents=True, exist_ok=True)
            np.savez(folder / f"{name}_{k:03d}.npz", x=x[start:start + chunk], y=y[start:start + chunk])
            used += size
    print(f"{part + 1} parts of at most {max_mb} MiB in {dest}")


def join(parts: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("train", "test"):
        chunks = sorted(parts.rglob(f"{name}_*.npz"), key=lambda p: p.name)
        if not chunks:
            raise SystemExit(f"no {name}_*.npz chunks under {parts}")
        xs, ys = zip(*[(f["x"], f["y"]) for f in map(np.load, chunks)])
        np.savez(dest / f"{name}.npz", x=np.concatenate(xs), y=np.concatenate(ys))
        print(f"{dest / name}.npz: {sum(len(y) for y in ys)} images from {len(chunks)} chunks")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("src", type=Path)
    s.add_argument("dest", type=Path)
    s.add_argument("--max-mb", type=float, default=50.0)
    j = sub.add_parser("join")
    j.add_argument("parts", type=Path)
    j.add_argument("dest", type=Path)
    args = ap.parse_args()
    split(args.src, args.dest, args.max_mb) if args.cmd == "split" else join(args.parts, args.dest)


if __name__ == "__main__":
    main()
