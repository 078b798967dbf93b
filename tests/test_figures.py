"""Every figure normfree writes, looked at: rendered to PNG with the Agg canvas and its Figure inspected
(panels, titles, labels, legend placement, y-limits), plus the diagnosis statements that go with them."""
import json
import math
import struct

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PolyCollection

import normfree
from normfree.analysis import (SPPResult, diagnose, find_problems, signal_propagation, spp_figure,
                               spp_history_figure)
from normfree.analysis.measure import measure, write
from normfree.analysis.plot import BACKWARD, FORWARD
from normfree.figures import ACCURACY_MIN_SPAN, accuracy_limits, data_label
from normfree.train import compare as compare_mod
from normfree.train.metrics import plot_run, run_figure


def fake(n=6, **overrides) -> SPPResult:
    values = dict(model="fake", input_shape=[8, 3, 32, 32], names=[f"b{i}" for i in range(n)],
                  transition=[i == 0 for i in range(n)], stem_sq_mean=1e-3, stem_var=1.0,
                  sq_mean=[1e-3] * n, var=[1.0] * n, res_var=[1.0] * n, inputs="N(0,1)")
    return SPPResult(**{**values, **overrides})


def render(fig, tmp_path, name="fig.png"):
    """Draw with Agg into a PNG (as the library saves) so text and legend extents are final."""
    FigureCanvasAgg(fig)
    path = tmp_path / name
    fig.savefig(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return fig


def png_size(path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk
    return width, height


def data_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def assert_legend_clear_of_panels(fig):
    """Exactly one legend, a figure legend, and its box overlaps no panel."""
    assert not [ax for ax in fig.axes if ax.get_legend() is not None], "a legend inside a panel"
    (legend,) = fig.legends
    box = legend.get_window_extent()
    for ax in data_axes(fig):
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()


def curves(ax):
    """The data lines of a panel (not the transition markers and reference lines, which have no label)."""
    return [line for line in ax.get_lines() if not line.get_label().startswith("_")]


def suptitle(fig) -> str:
    return fig._suptitle.get_text()


# ---- SPP figures ----------------------------------------------------------------------------------

def test_spp_figure_forward_panels_labels_and_legend_outside(tmp_path):
    results = [fake(model=f"m{k}", var=[1.0 + k] * 6) for k in range(4)]
    fig = render(spp_figure(results, title="t"), tmp_path)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == list(FORWARD)
    assert all(ax.get_xlabel().startswith("block (0 = stem)") for ax in axes)
    assert [len(curves(ax)) for ax in axes] == [4, 4, 4]  # one curve per model
    assert_legend_clear_of_panels(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["m0", "m1", "m2", "m3"]


def test_gradients_add_the_backward_panels(tmp_path):
    torch.manual_seed(0)
    model = normfree.create_model("nf_cifar_resnet20", skipinit_gain=1.0, width=0.25)
    r = signal_propagation(model, input_shape=(4, 3, 16, 16), gradients=True)
    fig = render(spp_figure(r), tmp_path)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == list(FORWARD + BACKWARD)
    norm_panel, var_panel = axes[3], axes[4]
    assert list(curves(norm_panel)[0].get_ydata()) == r.grad_norm
    assert list(curves(var_panel)[0].get_ydata()) == r.grad_var
    assert_legend_clear_of_panels(fig)
    # end to end: the file that normfree spp --grads writes has the second row (taller than without)
    results = measure(["nf_cifar_resnet20:width=0.25"], batch=4, input_size=16, gradients=True)
    write(results, tmp_path / "g", title="x")
    write(measure(["nf_cifar_resnet20:width=0.25"], batch=4, input_size=16), tmp_path / "f", title="x")
    assert png_size(tmp_path / "g/spp.png")[1] > 1.5 * png_size(tmp_path / "f/spp.png")[1]


def test_titles_state_inputs_and_skip_gains_the_title_does_not(tmp_path):
    zero = fake(model="nf", skip_gains=[0.0] * 6)
    fig = spp_figure([zero, fake(model="bn")], title="my title")
    assert suptitle(fig).splitlines() == [
        "my title", "inputs: N(0,1), 8x3x32x32; skip gain at init 0: every block outputs its shortcut"]
    # what the title already says is not repeated
    fig = spp_figure([zero], title="signal propagation, N(0,1) inputs, batch 8")
    assert "inputs:" not in suptitle(fig) and "skip gain at init 0" in suptitle(fig)
    fig = spp_figure([fake(inputs="images from test.npz", skip_gains=[1.0] * 6)])
    assert "images from test.npz" in suptitle(fig) and "skip gain at init 1" in suptitle(fig)
    # different gains per model: in the legend instead
    fig = render(spp_figure([zero, fake(model="fixup", skip_gains=[1.0] * 6)]), tmp_path)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["nf (skip gain 0: every block outputs its shortcut)", "fixup (skip gain 1)"]
    assert "skip gain" not in suptitle(fig)


def test_all_zero_curves_are_named_under_their_panel(tmp_path):
    """Fixup's residual branches are exactly 0 at init: a log axis cannot draw them, so the panel says so."""
    results = [fake(model="gnws", res_var=[50.0] * 6), fake(model="revbn", res_var=[0.006] * 6),
               fake(model="fixup", res_var=[0.0] * 6)]
    fig = render(spp_figure(results), tmp_path)
    res = data_axes(fig)[2]
    assert res.get_yscale() == "log"
    assert res.get_xlabel().splitlines()[1] == "0 at every block (not drawable on a log axis): fixup"
    assert "\n" not in data_axes(fig)[1].get_xlabel()  # nothing to say about the variance panel
    torch.manual_seed(0)  # the real Fixup net
    r = signal_propagation(normfree.create_model("fixup_cifar_resnet20", width=0.25), input_shape=(4, 3, 16, 16))
    assert r.res_var == [0.0] * 9


def test_history_figure_one_line_per_step_coloured_by_step(tmp_path):
    history = [fake(step=s, var=[1.0 + s / 10] * 6) for s in (20, 0, 10)]
    fig = render(spp_history_figure(history), tmp_path)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == list(FORWARD)
    assert all(len(curves(ax)) == 3 for ax in axes)
    lines = curves(axes[1])
    assert [line.get_ydata()[1] for line in lines] == [1.0, 2.0, 3.0]  # sorted by step
    (bar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert bar.get_ylabel() == "training step" and bar.get_ylim() == (0, 20)
    viridis = matplotlib.colormaps["viridis"]
    assert lines[0].get_color() == viridis(0.0) and lines[-1].get_color() == viridis(1.0)
    assert not fig.legends and not any(ax.get_legend() for ax in fig.axes)
    assert "3 SPPs at steps 0–20" in suptitle(fig)


def test_spp_every_writes_the_history_figure(tmp_path):
    from normfree.analysis import SPPRecorder
    torch.manual_seed(0)
    model = normfree.create_model("nf_cifar_resnet20", width=0.25)
    recorder = SPPRecorder(every=1, input_shape=(4, 3, 16, 16), out_dir=tmp_path, gradients=True)
    assert recorder.plot() is None  # nothing recorded yet
    for step in range(2):
        recorder(model, step)
    path = recorder.plot()
    assert path == tmp_path / "spp_history.png" and png_size(path)[1] > 600  # with the backward row
    assert [r.inputs for r in recorder.history] == ["N(0,1)"] * 2


# ---- accuracy axes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("values, lo, hi", [
    ([21.45, 21.6, 21.75], 21.6 - 2.5, 21.6 + 2.5),  # a 0.3-point wiggle: 5 points tall, centred
    ([0.2, 0.5], 0.0, 5.0),                            # never below 0
    ([99.5, 99.9], 95.0, 100.0),                       # never above 100
    ([10.0, 60.0], 10.0 - 4.0, 60.0 + 4.0),            # wide data: an 8 % margin
])
def test_accuracy_limits(values, lo, hi):
    assert accuracy_limits(values) == pytest.approx((lo, hi))


def test_run_plot_does_not_blow_up_a_wiggle(tmp_path):
    records = [{"kind": "step", "step": s, "loss": 2.0 - s / 10} for s in range(1, 6)]
    records += [{"kind": "epoch", "epoch": e, "test_top1": v, "ema_test_top1": v - 0.1}
                for e, v in ((1, 21.45), (2, 21.75), (3, 21.6))]
    fig = render(run_figure(records, "title"), tmp_path)
    acc = data_axes(fig)[1]
    lo, hi = acc.get_ylim()
    assert hi - lo >= ACCURACY_MIN_SPAN - 1e-9 and lo < 21.35 and hi > 21.75
    assert acc.get_ylabel() == "top-1 (%)" and acc.get_xlabel() == "epoch"
    assert_legend_clear_of_panels(fig)
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))
    (run / "config.yaml").write_text("model: nf_cifar_resnet20\nmodel_kwargs: {width: 0.25}\ndata: synthetic\n"
                                     "batch_size: 16\nlr: 0.1\nepochs: 3\n")
    assert plot_run(run).is_file()


# ---- compare: learning curves ----------------------------------------------------------------------

def _rows_with_runs(tmp_path, top1):
    """Rows as compare returns them, with each run's metrics.jsonl: ``top1[(model, batch, seed)]``."""
    rows = []
    for (model, batch, seed), values in top1.items():
        run = tmp_path / f"{model}_{batch}_{seed}"
        run.mkdir()
        (run / "metrics.jsonl").write_text("\n".join(
            json.dumps({"kind": "epoch", "epoch": e + 1, "test_top1": v}) for e, v in enumerate(values)))
        rows.append({"model": model, "batch_size": batch, "seed": seed, "run_dir": str(run)})
    return rows


def test_curves_mean_and_band_over_seeds(tmp_path):
    top1 = {("nf", 128, 0): [20, 40, 50], ("nf", 128, 1): [30, 44, 60], ("bn", 128, 0): [10, 20, 30],
            ("bn", 128, 1): [12, 22, 32], ("nf", 8, 0): [21, 22, 23], ("bn", 8, 0): [11, 12, 13]}
    fig = render(compare_mod.curves_figure(_rows_with_runs(tmp_path, top1), "t"), tmp_path)
    axes = data_axes(fig)
    assert [ax.get_title() for ax in axes] == ["batch 128", "batch 8"]
    assert all(ax.get_xlabel() == "epoch" and ax.get_ylabel() == "test top-1 (%)" for ax in axes)
    nf, bn = curves(axes[0])
    assert list(nf.get_ydata()) == [25, 42, 55] and list(bn.get_ydata()) == [11, 21, 31]  # the means
    bands = [c for c in axes[0].collections if isinstance(c, PolyCollection)]
    assert len(bands) == 2
    ys = bands[0].get_paths()[0].vertices[:, 1]
    assert min(ys) == 20 and max(ys) == 60 and {40, 44} <= set(ys)  # min–max over the seeds per epoch
    assert not [c for c in axes[1].collections if isinstance(c, PolyCollection)]  # one seed: no band
    assert "mean over 2 seeds" in suptitle(fig)
    assert_legend_clear_of_panels(fig)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["nf", "bn"]
    lo, hi = axes[1].get_ylim()
    assert lo <= 11 and hi >= 23 and lo > 0  # a floor near the data, not at 0


def test_compare_runs_every_seed_and_writes_curves(tmp_path, monkeypatch):
    """The plumbing of seeds: one run folder and row per seed, the seed in the table and the curves.
    Training itself is tests/test_compare.py's; here each run writes a known learning curve."""
    def fake_run(spec, cfg):
        run = compare_mod.Path(cfg.out_dir)
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(
            {"kind": "epoch", "epoch": e, "test_top1": 10.0 * e + cfg.seed}) for e in (1, 2)))
        nan = float("nan")
        return {**dict.fromkeys(compare_mod.COLUMNS, nan), "model": spec, "batch_size": cfg.batch_size,
                "seed": cfg.seed, "lr": cfg.lr, "param_groups": "default", "mem_kind": "", "error": "",
                "run_dir": cfg.out_dir}

    monkeypatch.setattr(compare_mod, "_run_row", fake_run)
    rows = compare_mod.compare(["nf_cifar_resnet20:width=0.25"], "synthetic", tmp_path, batch_sizes=(8,),
                               epochs=2, spp_batch=2, seed=(3, 5), device="cpu")
    assert [(r["seed"], r["run_dir"].rsplit("/", 1)[-1]) for r in rows] == [
        (3, "nf_cifar_resnet20-width=0.25_bs8_seed3"), (5, "nf_cifar_resnet20-width=0.25_bs8_seed5")]
    assert png_size(tmp_path / "curves.png")[0] > 500
    assert "| 8 | 5 |" in (tmp_path / "results.md").read_text()
    assert json.loads((tmp_path / "results.json").read_text())["settings"]["seed"] == [3, 5]
    band = [c for c in data_axes(compare_mod.curves_figure(rows))[0].collections]
    assert band and set(band[0].get_paths()[0].vertices[:, 1]) == {13, 15, 23, 25}
    with pytest.raises(normfree.errors.ConfigError, match="distinct seeds"):
        compare_mod.compare(["nf_cifar_resnet20"], "synthetic", tmp_path / "x", seed=(1, 1))


# ---- the diagnosis that goes with the figure -------------------------------------------------------

def test_dead_branches_at_init_are_stated_not_no_problems():
    torch.manual_seed(0)
    r = signal_propagation(normfree.create_model("nf_cifar_resnet20", width=0.25), input_shape=(4, 3, 16, 16))
    assert r.skip_gains == [0.0] * 9  # the official init
    text = diagnose(r)
    assert "No problems found" not in text
    (f,) = [f for f in find_problems(r) if f.kind == "identity"]
    assert "all 9 skip gains are 0" in f.message and "--skipinit-gain 1" in f.message
    assert not [f for f in find_problems(fake(skip_gains=[0.0, 1.0, 0, 0, 0, 0])) if f.kind == "identity"]
    assert "No problems found" in diagnose(fake(skip_gains=[1.0] * 6))


@pytest.mark.parametrize("name, std_conv, normalized", [
    ("nf_cifar_resnet20", True, False), ("nf_cifar_resnet20:std_conv=False", False, False),
    ("bn_cifar_resnet20", False, True), ("gnws_cifar_resnet20", True, True), ("evos0_cifar_resnet20", False, True),
    ("fixup_cifar_resnet20", False, False)])
def test_results_record_what_the_model_has(name, std_conv, normalized):
    base, _, option = name.partition(":")
    model = normfree.create_model(base, width=0.25, **({"std_conv": False} if option else {}))
    r = signal_propagation(model, input_shape=(2, 3, 8, 8))
    assert (r.std_conv, r.normalized) == (std_conv, normalized)


def test_diagnosis_never_recommends_what_the_model_has():
    mean_shift = dict(sq_mean=[0.2] * 6)
    low_res = dict(res_var=[0.2] * 6, stem_var=0.27)  # real images through Scaled WS
    for overrides in (mean_shift, low_res, dict(var=[1, 1, 1, 11, 120, 120]),
                      dict(var=[1.5] * 6, expected_var=[1.04] * 6)):
        has = " ".join(f.message for f in find_problems(fake(**overrides, std_conv=True, normalized=True)))
        lacks = " ".join(f.message for f in find_problems(fake(**overrides, std_conv=False, normalized=False)))
        assert has and lacks
        remedies = ("std_conv=True", "Scaled WS with", "check Scaled WS", "or normalize",
                    "normalization layer that re-centres", "He init with normalization")
        assert not [remedy for remedy in remedies if remedy in has], has
        assert any(remedy in lacks for remedy in remedies), lacks  # the same finding advises a model without
    # one trait present: only the other is suggested
    msg = find_problems(fake(**mean_shift, std_conv=False, normalized=True))[0].message
    assert "std_conv=True" in msg and "normalization layer" not in msg


def test_real_image_like_inputs_get_no_scaled_ws_advice(tmp_path):
    """Smooth images (low-frequency content that zero-mean filters remove) into an NF net that has Scaled WS."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (16, 4, 4, 3)).astype(np.float32)
    x = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2).astype(np.uint8)  # 32x32 blocks of colour
    (tmp_path / "imgs").mkdir()
    for split in ("train", "test"):
        np.savez(tmp_path / "imgs" / f"{split}.npz", x=x, y=np.zeros(16, np.int64))
    (r,) = measure(["nf_cifar_resnet20:width=0.25"], batch=16, data=f"npz:{tmp_path / 'imgs'}")
    assert r.inputs == "images from npz:imgs" and r.std_conv and r.stem_var < 0.5
    text = diagnose(r)
    assert "Residual-branch variance far from 1" in text and "already uses Scaled WS" in text
    assert "Scaled WS with" not in text and "std_conv=True" not in text
    assert math.isfinite(r.stem_var)


def test_panels_without_curves_are_left_out(tmp_path):
    """Nets without residual branches (the speedrun nets) get no empty residual panel."""
    fig = render(spp_figure([fake(res_var=[None] * 6)]), tmp_path)
    assert [ax.get_title() for ax in data_axes(fig)] == list(FORWARD[:2])
    fig = render(spp_figure([fake(res_var=[None] * 6, grad_norm=[1.0] * 6, grad_var=[2.0] * 6)]), tmp_path)
    assert [ax.get_title() for ax in data_axes(fig)] == [*FORWARD[:2], *BACKWARD]


@pytest.mark.parametrize("spec, label", [("npz:/data/sets/cifar10", "npz:cifar10"), ("synthetic", "synthetic"),
                                         ("/x/y/test.npz", "test.npz"), ("demo", "demo")])
def test_titles_carry_no_machine_paths(spec, label):
    assert data_label(spec) == label
