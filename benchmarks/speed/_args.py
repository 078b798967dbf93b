"""Command-line arguments shared by the scripts in this folder."""
from __future__ import annotations

import argparse


def step_parser(description: str | None) -> argparse.ArgumentParser:
    """MODEL, --mode, --batch, --size: what every per-step script here needs."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("model")
    p.add_argument("--mode", default="train", choices=["train", "infer"])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=128)
    return p
