"""Every ```python block in README.md and docs/*.md runs, and what it prints or produces is checked.

Blocks that import timm or torchvision are marked ``timm`` (they run in the timm venv, ``make test-timm``).
Blocks fenced as ```python fragment are excerpts that need the reader's own objects or files (a data
loader, downloaded weights) and are only compiled. Every other block needs an entry in CHECKS (keyed by
a line of its code), which asserts on its namespace, its printed output and the files it wrote. Blocks
that run full-size models or real training run at a reduced size by default (SHRINK: each replacement
must match the block, so an edited example fails loudly) and as written under ``-m slow``. Examples
that start processes (SCRIPTS) run as real scripts in a subprocess, not with ``exec``.
"""
from __future__ import annotations

import ast
import contextlib
import io
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```python( fragment)?\n(.*?)^```", re.S | re.M)


def _lines(out: str) -> list[str]:
    return out.strip().splitlines()


def _readme_use(ns: dict, out: str, tmp: Path) -> None:
    assert ns["logits"].shape == (2, 1000) and ns["model"].drop.p == 0.25
    assert ns["twin"].model_name == "bn_resnet50"
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ns["twin"].modules())


def _baselines_table(ns: dict, out: str, tmp: Path) -> None:
    lines = _lines(out)
    prefixes = ["nf", "bn", "relubn", "revbn", "gnws", "evob0", "evos0", "fixup", "skipinit"]
    assert [ln.split()[0] for ln in lines[:9]] == prefixes
    assert all(ln.split(None, 1)[1] == "(8, 10)" for ln in lines[:9])
    assert ast.literal_eval(lines[9]) == pytest.approx([0.1, 0.01])  # as the comment in the example says
    assert ast.literal_eval(lines[10]) == [pytest.approx(g) for g in [(0.1, 1e-4), (0.1, 0.0), (0.001, 0.0)]]


def _baselines_builders(ns: dict, out: str, tmp: Path) -> None:
    gns = [m for m in ns["gn16"].modules() if isinstance(m, torch.nn.GroupNorm)]
    assert gns and all(m.num_groups == 16 for m in gns)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in ns["relu_bn"].modules())
    assert not any(isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm)) for m in ns["fixup"].modules())


def _baselines_slopes(ns: dict, out: str, tmp: Path) -> None:
    slopes = {ln.split()[0]: (float(ln.split()[1]), float(ln.split()[2])) for ln in _lines(out)}
    assert len(slopes) == 9
    nf_var, nf_mean = slopes["nf"]
    assert abs(nf_var - 0.2**2) < 0.02 and abs(nf_mean) < 0.01  # +α² per block, no mean shift
    assert slopes["bn"][0] > 5 * nf_var  # BN→ReLU: variance grows about linearly, much faster
    assert all(math.isfinite(v) for pair in slopes.values() for v in pair)


def _baselines_compare(ns: dict, out: str, tmp: Path) -> None:
    rows = ast.literal_eval(_lines(out)[-1])
    assert sorted((m, b, s) for m, b, s, _ in rows) == [(m, b, s) for m in ("nf_cifar_resnet20",
                                                                          "skipinit_cifar_resnet20")
                                                        for b in (4, 32) for s in (0, 1)]
    assert all(0 <= top1 <= 100 for *_, top1 in rows)
    assert {"spp.png", "curves.png", "results.md", "results.csv", "results.json"} <= {
        p.name for p in (tmp / "runs/cmp").iterdir()}


def _models_table(ns: dict, out: str, tmp: Path) -> None:
    m = ns["model"]
    cfg = m.pretrained_cfg
    assert (cfg["input_size"], cfg["test_input_size"], m.drop_rate, m.input_size) == ((3, 192, 192), (3, 256, 256),
                                                                                       0.2, 256)
    assert cfg["crop_pct"] == 0.8889 and m.get_classifier() is m.fc and m.fc.out_features == 10  # reset_classifier(10)
    assert [len(s) for s in ns["tiny"].stages] == [1, 2, 1, 1] and ns["tiny"].fc.out_features == 10


def _models_features(ns: dict, out: str, tmp: Path) -> None:
    lines = _lines(out)
    infos = [ast.literal_eval(ln.split("#")[0]) for ln in lines[:-1]]
    assert infos[0] == {"num_chs": 36, "reduction": 2, "module": "stem"}  # what the comment promises
    assert infos[-1]["num_chs"] == 960 and infos[-1]["reduction"] == 32
    shapes = ast.literal_eval(lines[-1])
    assert shapes == [(i["num_chs"], 224 // i["reduction"], 224 // i["reduction"]) for i in infos]


def _models_parity(ns: dict, out: str, tmp: Path) -> None:
    errors = {ln.split()[0]: float(ln.split()[1]) for ln in _lines(out)}
    assert set(errors) == set(ns["TINY"]) and all(e < 1e-5 for e in errors.values())  # fp32 rounding


def _speed_fast_path(ns: dict, out: str, tmp: Path) -> None:
    assert ns["model"].stages[0][0].fast_path and not ns["plain"].stages[0][0].fast_path
    assert ns["plain"].stages[0][0].skip_gain.item() == 0.5  # live branches: the comparison covers them


def _speed_deploy(ns: dict, out: str, tmp: Path) -> None:
    assert float(out) < 1e-5  # printed relative error, "~1e-7"
    x, model = ns["x"], ns["model"]
    with torch.no_grad():
        ref = model(x)
        for form in (ns["same"], ns["compiled"]):
            assert float((form(x) - ref).abs().max() / ref.abs().max()) < 1e-5
    assert ns["same"] is not model and ns["fast"] is not ns["same"]


def _speed_onnx(ns: dict, out: str, tmp: Path) -> None:
    assert (tmp / "nf_resnet26.onnx").stat().st_size > 10_000
    with torch.no_grad():
        ref = ns["model"](ns["x"])
    assert ns["out"].shape == (2, 10)
    assert float((torch.from_numpy(ns["out"]) - ref).abs().max() / ref.abs().max()) < 1e-4


def _spp_api(ns: dict, out: str, tmp: Path) -> None:
    r = ns["result"]
    n = len(list(ns["model"].blocks()))
    assert len(r.var) == len(r.res_var) == len(r.grad_norm) == n
    assert r.expected_var == pytest.approx(ns["model"].expected_var)  # unit skip gains: the prediction holds
    assert max(abs(d) for d in r.deviation) < 0.25
    assert out.strip()  # the diagnosis text
    assert {"spp.png", "spp.json", "spp.csv"} <= {p.name for p in tmp.iterdir()}
    from normfree.analysis.spp import load_csv, load_json
    assert load_json(tmp / "spp.json")[0].var == r.var and load_csv(tmp / "spp.csv")[0].var == r.var


def _training_dp(ns: dict, out: str, tmp: Path) -> None:
    model, grads, x = ns["model"], ns["grads"], ns["x"]
    assert set(grads) == {n for n, _ in model.named_parameters()}
    assert all(grads[n].shape == (len(x), *p.shape) for n, p in model.named_parameters())
    clipped = ns["norms"] * ns["factor"]
    assert torch.all(clipped <= ns["max_norm"] * (1 + 1e-5)) and torch.all(ns["factor"] <= 1)


def _training_api(ns: dict, out: str, tmp: Path) -> None:
    top1 = float(_lines(out)[-1])  # after the per-epoch log lines
    assert top1 == ns["summary"]["test_top1"] and 0 <= top1 <= 100
    run = tmp / "runs/api"
    assert {"config.yaml", "metrics.jsonl", "summary.json", "last.safetensors"} <= {p.name for p in run.iterdir()}


def _baselines_init(ns: dict, out: str, tmp: Path) -> None:
    lines = _lines(out)
    variances = ast.literal_eval(lines[0])
    assert variances and all(0.5 < v < 2 for v in variances)  # AutoInit: unit variance per block
    assert lines[-1] == "True"  # Proxy Norm is batch-independent
    r = ns["result"]
    assert r.forward_passes > 0 and r.backward_passes > 0 and min(r.scales.values()) > 0
    assert lines[-2].split()[:2] == [str(r.forward_passes), str(r.backward_passes)]


def _models_features_only(ns: dict, out: str, tmp: Path) -> None:
    info = ns["backbone"].feature_info
    assert (info.channels(), info.reduction()) == ([12, 12, 69], [4, 8, 32])  # what the comment promises
    assert [tuple(m.shape) for m in ns["maps"]] == [(1, c, 64 // r, 64 // r) for c, r in
                                                    zip(info.channels(), info.reduction())]
    assert not hasattr(ns["backbone"], "fc")


def _privacy_opacus(ns: dict, out: str, tmp: Path) -> None:
    lines = _lines(out)
    assert "BatchNorm" in lines[0]
    assert lines[-1].startswith("epsilon after one epoch: ") and float(lines[-1].split(": ")[1]) > 0
    assert ns["engine"].accountant.history  # the accountant saw the epoch's steps


def _speedrun_init(ns: dict, out: str, tmp: Path) -> None:
    variances = ast.literal_eval(_lines(out)[-1])
    assert variances and all(abs(v - 1) < 0.05 for v in variances)  # "1.0 at every GELU input"


def _integrations_timm(ns: dict, out: str, tmp: Path) -> None:
    assert float(out) < 1e-5  # "the same function" (fp32)
    assert set(ns["to_timm"](ns["model"], "nf_resnet26")) == set(ns["ref"].state_dict())


def _integrations_torchvision(ns: dict, out: str, tmp: Path) -> None:
    lines = _lines(out)
    assert lines[0] == "['boxes', 'labels', 'scores']"
    assert all(torch.isfinite(v) for v in ns["losses"].values()) and len(ns["losses"]) == 4
    shapes = ast.literal_eval(lines[1])
    assert list(shapes) == [i["module"] for i in ns["net"].feature_info]
    assert [s[1] for s in shapes.values()] == [i["num_chs"] for i in ns["net"].feature_info]


def _integrations_onnx(ns: dict, out: str, tmp: Path) -> None:
    assert float(out) < 1e-5 and (tmp / "nf_regnet.onnx").stat().st_size > 10_000
    with torch.no_grad():
        assert ns["model"](ns["x"]).abs().max() > 0  # a live classifier: the comparison is not 0 vs 0


def _integrations_tracers(ns: dict, out: str, tmp: Path) -> None:
    assert out.split() == ["True", "True"]


def _integrations_meta(ns: dict, out: str, tmp: Path) -> None:
    lines = _lines(out)
    gmacs = float(lines[0].split()[0])
    assert abs(gmacs / 114.8 - 1) < 0.005  # NFNet-F3 at 416 px: 114.8 GFLOPs (multiply-adds) in the paper
    assert lines[1] == "True" and float(lines[2]) == 0.0 and not any(p.is_meta for p in ns["small"].parameters())


def _integrations_opacus(ns: dict, out: str, tmp: Path) -> None:
    assert float(out.split()[-1]) > 0 and ns["privacy"].accountant.history


CHECKS: dict[str, Callable[[dict, str, Path], None]] = {
    'ref.load_state_dict(to_timm(model, "nf_resnet26"))': _integrations_timm,
    "backbone = BackboneWithFPN(feats, return_layers": _integrations_torchvision,
    "from onnxruntime import InferenceSession": _integrations_onnx,
    "program = torch.export.export(model": _integrations_tracers,
    'big = normfree.create_model("nfnet_f3")': _integrations_meta,
    "privacy = PrivacyEngine()": _integrations_opacus,
    "report = autoinit(model)": _baselines_init,
    'backbone = normfree.create_model("nf_regnet_b0", features_only=True': _models_features_only,
    "engine = PrivacyEngine()": _privacy_opacus,
    "model.init_from_data(images)": _speedrun_init,
    'model = normfree.create_model("nf_resnet50", num_classes=1000, drop_rate=0.25)': _readme_use,
    'print(f"{prefix:9s}", tuple(model(x).shape))': _baselines_table,
    'gn16 = resnet(56, small_input=True, norm="gn", std_conv=True, ws="plain",': _baselines_builders,
    "last = block_stats(model, x)[-9:]": _baselines_slopes,
    "rows = compare(": _baselines_compare,
    'model = normfree.create_model("nfnet_f0")': _models_table,
    'backbone = normfree.create_model("nf_regnet_b0")': _models_features,
    "from test_convert_deepmind import FIXTURES, TINY, _tiny": _models_parity,
    "plain = set_fast_path(": _speed_fast_path,
    "fast = normfree.deploy(model)": _speed_deploy,
    "import onnxruntime as ort": _speed_onnx,
    "result = signal_propagation(model, input_shape=(8, 3, 224, 224), gradients=True)": _spp_api,
    "grads = per_example_grads(model, x, y, chunk_size=8)": _training_dp,
    "summary = Trainer(cfg).fit()": _training_api,
}
"""A line of each example → the check of what it printed and produced."""

SHRINK: dict[str, list[tuple[str, str]]] = {  # the default run's reduced sizes; -m slow runs as written
    "rows = compare(": [('epochs=1,', 'epochs=1, train_subset=64, test_subset=32,')],
    "result = signal_propagation(model, input_shape=(8, 3, 224, 224), gradients=True)": [
        ('create_model("nf_resnet50", skipinit_gain=1.0)', 'create_model("nf_resnet50", skipinit_gain=1.0, width=0.25)'),
        ("input_shape=(8, 3, 224, 224)", "input_shape=(8, 3, 64, 64)")],
    "summary = Trainer(cfg).fit()": [("epochs=2,", "epochs=2, train_subset=64, test_subset=32,")],
}
SLOW = {"rows = compare("}  # eight training runs even when shrunk (tests/test_compare.py covers compare)
SCRIPTS = {"rows = compare("}
"""Examples that start processes (a spawned process imports the main module again): they run as real
scripts in a subprocess, so a missing ``if __name__ == "__main__":`` guard fails as it does for a reader."""


def _key(code: str) -> str | None:
    keys = [k for k in CHECKS if k in code]
    return keys[0] if len(keys) == 1 else None


TIMM_IMPORT = re.compile(r"^(import|from) (timm|torchvision)\b", re.M)
"""Examples that import timm or torchvision run in the timm venv (marked ``timm``, as tests/clients)."""


def _blocks() -> list:
    out = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for i, m in enumerate(FENCE.finditer(path.read_text())):
            where, code, fragment = f"{path.name}#{i}", m.group(2), bool(m.group(1))
            key = _key(code)
            marks = [pytest.mark.timm] if TIMM_IMPORT.search(code) and not fragment else []
            if key in SHRINK:
                out.append(pytest.param(where, code, fragment, True, id=where,
                                        marks=marks + ([pytest.mark.slow] if key in SLOW else [])))
                out.append(pytest.param(where, code, fragment, False, id=f"{where}-as-written",
                                        marks=[*marks, pytest.mark.slow]))
            else:
                out.append(pytest.param(where, code, fragment, False, id=where, marks=marks))
    return out


def _main_guarded(code: str) -> bool:
    """True when no top-level statement calls anything outside an ``if __name__ == "__main__":`` block."""
    def guard(node: ast.stmt) -> bool:
        return isinstance(node, ast.If) and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"'
    top = [n for n in ast.parse(code).body if not guard(n) and not isinstance(n, (ast.FunctionDef, ast.ClassDef))]
    return any(guard(n) for n in ast.parse(code).body) and not any(
        isinstance(sub, ast.Call) for n in top for sub in ast.walk(n))


def test_examples_that_start_processes_guard_their_main_code():
    """The fast half of SCRIPTS (running them is slow): each such example is a safe script."""
    codes = [m.group(2) for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for m in FENCE.finditer(path.read_text()) if not m.group(1)]
    for key in SCRIPTS:
        (code,) = [c for c in codes if key in c]
        assert _main_guarded(code), f"the example with {key!r} needs its calls under if __name__ == '__main__':"
    assert not _main_guarded("import x\nx.run()\nif __name__ == '__main__':\n    pass\n")


def _run_script(where: str, code: str, tmp: Path) -> str:
    """Run ``code`` as ``python example.py`` in ``tmp``, as a reader would; its stdout."""
    script = tmp / "example.py"
    script.write_text(code)
    env = {**os.environ, "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, script.name], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, f"{where} failed as a script:\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_every_check_matches_one_example():
    codes = [m.group(2) for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
             for m in FENCE.finditer(path.read_text()) if not m.group(1)]
    for key in CHECKS:
        assert sum(key in c for c in codes) == 1, f"check {key!r} matches no example, or several"


@pytest.mark.parametrize("where, code, fragment, shrink", _blocks())
def test_doc_example(where: str, code: str, fragment: bool, shrink: bool, tmp_path, monkeypatch) -> None:
    compile(code, where, "exec")
    if fragment:
        return
    key = _key(code)
    assert key is not None, f"{where}: add a check of what this example prints or produces to CHECKS"
    if shrink:
        for old, new in SHRINK[key]:
            assert old in code, f"{where}: the example changed; update SHRINK ({old!r})"
            code = code.replace(old, new)
    if key in SCRIPTS:
        CHECKS[key]({}, _run_script(where, code, tmp_path), tmp_path)
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [str(ROOT / "tests"), *sys.path])  # examples using test fixtures
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ns: dict = {"__name__": "__doc_example__"}
    buf = io.StringIO()
    torch.manual_seed(0)
    with contextlib.redirect_stdout(buf):
        exec(compile(code, where, "exec"), ns)
    CHECKS[key](ns, buf.getvalue(), tmp_path)
