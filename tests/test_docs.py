"""Every ```python block in README.md and docs/*.md runs as written (in a temporary directory).

Blocks fenced as ```python fragment are excerpts that need the reader's own objects or files (a data
loader, downloaded weights) and are only compiled. A block skips when an optional package it imports is
missing.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python( fragment)?\n(.*?)^```", re.S | re.M)
OPTIONAL = ("onnxruntime", "onnx", "matplotlib")


def _blocks() -> list:
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(FENCE.finditer(path.read_text())):
            out.append(pytest.param(f"{path.name}#{i}", m.group(2), bool(m.group(1)), id=f"{path.name}#{i}"))
    return out


@pytest.mark.parametrize("where, code, fragment", _blocks())
def test_doc_example_runs(where: str, code: str, fragment: bool, tmp_path, monkeypatch) -> None:
    compiled = compile(code, where, "exec")
    if fragment:
        return
    for module in OPTIONAL:
        if re.search(rf"^\s*import {module}\b", code, re.M):
            pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT / "tests"), *sys.path])  # examples using test fixtures
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compiled, {"__name__": "__doc_example__"})
