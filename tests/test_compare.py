"""normfree compare: SPP figure + results table; the trainer's paper-prescribed parameter groups."""
import csv
import dataclasses
import json
import math
from concurrent.futures import Future

import pytest
import torch

from normfree.cli import main
from normfree.errors import NormfreeError
from normfree.train import compare as compare_module
from normfree.train.compare import COLUMNS, compare
from normfree.train.config import TrainConfig
from normfree.train.trainer import Trainer


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Tiny tensors on a shared CPU: one intra-op thread here and in the spawned training processes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _tiny(tmp_path, name, param_groups="auto"):
    cfg = TrainConfig(model=name, data="synthetic", train_subset=32, test_subset=16, epochs=1, batch_size=8,
                      lr=0.4, warmup_epochs=0, param_groups=param_groups, out_dir=str(tmp_path / name),
                      model_kwargs={"width": 0.5}, log_every=1, device="cpu")
    return Trainer(cfg)


@pytest.mark.parametrize("name, kind, ratios", [
    ("fixup_cifar_resnet20", "fixup", [1.0, 0.1]),
    ("revbn_cifar_resnet20", "revisited_bn", [1.0, 1.0, 0.01]),
    ("nf_cifar_resnet20", "default", [1.0, 1.0]),
])
def test_auto_param_groups_keep_their_lr_ratio_through_the_schedule(tmp_path, name, kind, ratios):
    trainer = _tiny(tmp_path, name)
    trainer.fit()
    groups = trainer.opt.param_groups
    assert [g["kind"] for g in groups] == [kind] * len(ratios)
    lrs = [g["lr"] for g in groups]
    assert lrs[0] > 0  # the cosine has not reached 0 after the last of 4 steps
    assert [lr / lrs[0] for lr in lrs] == pytest.approx(ratios)


def test_fixup_scalars_are_in_the_slow_group(tmp_path):
    trainer = _tiny(tmp_path, "fixup_cifar_resnet20")
    slow = {id(p) for p in trainer.opt.param_groups[1]["params"]}
    names = {n for n, p in trainer.model.named_parameters() if id(p) in slow}
    assert names and all(n.endswith(("bias", "skip_gain")) for n in names)
    assert any(n.endswith("skip_gain") for n in names)


def test_param_groups_default_ignores_the_model_family(tmp_path):
    trainer = _tiny(tmp_path, "fixup_cifar_resnet20", param_groups="default")
    assert {g["lr_scale"] for g in trainer.opt.param_groups} == {1.0}


def test_bad_param_groups_is_a_user_error():
    with pytest.raises(NormfreeError, match="param_groups"):
        TrainConfig(param_groups="lars")


class _HereAndNow:
    """Stand-in for compare's one-worker ``ProcessPoolExecutor``: runs the submitted call in this process.
    Spawning a process per run costs a torch import each; the spawned path (a summary and a failure
    crossing it) is covered by test_each_run_trains_in_a_spawned_process_and_its_failure_comes_back_as_a_row."""

    def __init__(self, *_args, **_kwargs) -> None:
        pass

    def __enter__(self) -> "_HereAndNow":
        return self

    def __exit__(self, *_exc) -> None:
        return None

    def submit(self, fn, *args) -> Future:
        done: Future = Future()
        try:
            done.set_result(fn(*args))
        except Exception as err:  # noqa: BLE001 - handed to the caller, as a process pool does
            done.set_exception(err)
        return done


def test_compare_writes_figure_and_table_and_every_variant_trains(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "ProcessPoolExecutor", _HereAndNow)
    models = ["nf_cifar_resnet20:width=0.5", "fixup_cifar_resnet20:width=0.5"]
    rows = compare(models, "synthetic", tmp_path, batch_sizes=(16, 4), epochs=1, lr=0.2, lr_batch=16,
                   train_subset=32, test_subset=16, spp_batch=4, spp_skipinit_gain=1.0, device="cpu",
                   warmup_epochs=0)
    assert (tmp_path / "spp.png").stat().st_size > 10_000
    assert (tmp_path / "curves.png").stat().st_size > 10_000  # learning curves (tests/test_figures.py looks)
    spp = json.loads((tmp_path / "spp.json").read_text())
    labels = [r["model"] for r in spp["results"]]
    assert labels == ["nf_cifar_resnet20:width=0.5,skipinit_gain=1.0", "fixup_cifar_resnet20:width=0.5"]

    assert [(r["model"], r["batch_size"]) for r in rows] == [(m, b) for b in (16, 4) for m in models]
    for r in rows:
        assert math.isfinite(r["first_loss"]) and math.isfinite(r["final_train_loss"])
        assert r["final_train_loss"] != r["first_loss"], r  # the weights moved
        assert 0 <= r["test_top1"] <= 100 and r["img_per_s"] > 0 and r["peak_mem_mb"] > 50
        assert r["lr"] == pytest.approx(0.2 * r["batch_size"] / 16)
    assert [r["param_groups"] for r in rows] == ["default", "fixup"] * 2
    assert rows[1]["lr_scales"] == pytest.approx([1.0, 0.1])

    table = json.loads((tmp_path / "results.json").read_text())
    assert table["rows"] == json.loads(json.dumps(rows)) and table["settings"]["train_subset"] == 32
    with (tmp_path / "results.csv").open() as f:
        csv_rows = list(csv.DictReader(f))
    assert list(csv_rows[0]) == list(COLUMNS) and len(csv_rows) == 4
    assert float(csv_rows[3]["test_top1"]) == pytest.approx(rows[3]["test_top1"])
    md = (tmp_path / "results.md").read_text()
    assert md.count("| fixup_cifar_resnet20:width=0.5 |") == 2 and "train subset 32" in md
    for r in rows:
        assert (tmp_path / "runs" / r["run_dir"].rsplit("/", 1)[-1] / "metrics.jsonl").is_file()


def test_compare_cli_rejects_unknown_models_before_any_work(tmp_path, capsys):
    assert main(["compare", "nf_cifar_resnet20", "bn_cifar_resnt20", "--data", "synthetic",
                 "--out-dir", str(tmp_path / "out")]) == 2
    assert "bn_cifar_resnet20" in capsys.readouterr().err  # the suggestion
    assert not (tmp_path / "out").exists()


def test_compare_rejects_bad_batch_sizes(tmp_path):
    with pytest.raises(NormfreeError, match="--batch-size = 0: must be an integer >= 1"):
        compare(["nf_cifar_resnet20"], "synthetic", tmp_path, batch_sizes=(0,))

def test_a_diverging_run_is_a_row_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(compare_module, "ProcessPoolExecutor", _HereAndNow)
    rows = compare(["nf_cifar_resnet20:width=0.5"], "synthetic", tmp_path, batch_sizes=(16, 8), epochs=1,
                   lr=1e8, lr_batch=16, train_subset=64, test_subset=16, spp_batch=4, device="cpu",
                   warmup_epochs=0)
    assert len(rows) == 2 and all("training loss became" in r["error"] for r in rows)  # the second still ran
    assert all(math.isnan(r["test_top1"]) for r in rows)
    assert (tmp_path / "results.md").read_text().count("failed: ") == 2


def test_each_run_trains_in_a_spawned_process_and_its_failure_comes_back_as_a_row(tmp_path):
    """The real one-worker spawn pool: a run's summary and a diverged run's error cross the process
    boundary (both must pickle), and the child's peak memory is its own."""
    cfg = TrainConfig(model="nf_cifar_resnet20", model_kwargs={"width": 0.5}, data="synthetic", train_subset=16,
                      test_subset=8, epochs=1, batch_size=8, lr=0.1, warmup_epochs=0, log_every=1,
                      device="cpu", out_dir=str(tmp_path / "ok"))
    ok = compare_module._run_row("nf_cifar_resnet20:width=0.5", cfg)
    assert not ok["error"] and ok["mem_kind"] == "process peak RSS" and ok["peak_mem_mb"] > 50
    assert math.isfinite(ok["first_loss"]) and ok["final_train_loss"] != ok["first_loss"]
    assert (tmp_path / "ok" / "metrics.jsonl").is_file()
    bad = compare_module._run_row("nf_cifar_resnet20:width=0.5", dataclasses.replace(cfg, lr=1e8, out_dir=str(tmp_path / "bad")))
    assert "training loss became" in bad["error"] and math.isnan(bad["test_top1"])
