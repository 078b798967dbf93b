"""Regenerate the figures under docs/img/ with the library's own plotting code, so the docs show what
normfree draws today. Small nets and budgets (minutes on 2 CPU cores, no GPU):

    python tools/make_docs_figures.py --data DIR [--only NAME ...]

``DIR`` is a CIFAR-10 folder with ``train.npz`` / ``test.npz`` (uint8 ``x``, labels ``y``), needed by
``history`` and ``curves`` only. Figures re-drawn from saved numbers (``init_pn``, ``speedrun``) need
no measuring. Each figure's command or source is stated in the doc that shows it.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMG = ROOT / "docs" / "img"
NINE = ["nf_cifar_resnet20:skipinit_gain=1.0"] + [f"{p}_cifar_resnet20" for p in
                                                   ("bn", "relubn", "revbn", "gnws", "evob0", "evos0", "fixup",
                                                    "skipinit")]


def resnet50(_data: str | None) -> None:
    """``normfree demo``'s figure: three ResNet-50s at init, NF skip gains 1."""
    from normfree.analysis.measure import measure
    from normfree.analysis.plot import plot_spp

    specs = ["bn_resnet50", "nf_resnet50:std_conv=False", "nf_resnet50"]
    plot_spp(measure(specs, batch=16, input_size=224, skipinit_gain=1.0), IMG / "spp_resnet50.png",
             title="ResNet-50 depth, width 4 (official), 224px N(0,1) inputs, batch 16")


def baselines(_data: str | None) -> None:
    """The nine ResNet-20 variants at init as ``normfree compare --spp-skipinit-gain 1`` draws them."""
    from normfree.analysis.measure import measure
    from normfree.analysis.plot import plot_spp

    plot_spp(measure(NINE, batch=16), IMG / "spp_baselines_cifar_resnet20.png",
             title="signal propagation at init, N(0,1) inputs, batch 16")


def grads(_data: str | None) -> None:
    """``normfree spp ... --grads``: forward and backward panels; the BN baseline with a non-zero
    classifier init, since its official zero classifier makes every block gradient 0."""
    from normfree.analysis.measure import measure
    from normfree.analysis.plot import plot_spp

    specs = ["nf_cifar_resnet56", "nf_cifar_resnet56:std_conv=False", "bn_cifar_resnet56:fc_init_std=0.01"]
    plot_spp(measure(specs, batch=16, skipinit_gain=1.0, gradients=True), IMG / "spp_grads_cifar_resnet56.png",
             title="signal propagation at init with gradients (--grads), N(0,1) inputs, batch 16")


def init_pn(_data: str | None) -> None:
    """Re-drawn from benchmarks/baselines_cifar10/spp_init/spp.json (its GradInit run takes minutes)."""
    from normfree.analysis import load_json, plot_spp

    plot_spp(load_json(ROOT / "benchmarks/baselines_cifar10/spp_init/spp.json"), IMG / "spp_init_pn_gradinit_autoinit.png",
             title="ResNet-20 at init: Proxy Norm, GradInit, AutoInit vs NF and BN (N(0,1) inputs, batch 16)")


def speedrun(_data: str | None) -> None:
    """Re-drawn from docs/img/spp_speedrun.csv (benchmarks/speedrun/spp.py)."""
    from normfree.analysis import load_csv, plot_spp

    plot_spp(load_csv(IMG / "spp_speedrun.csv"), IMG / "spp_speedrun.png",
             title="speedrun nets at init: signal entering each GELU")


def _train(cfg: dict, out: Path) -> Path:
    from normfree.train.config import TrainConfig
    from normfree.train.trainer import Trainer

    Trainer(TrainConfig.from_dict({**cfg, "out_dir": str(out)})).fit()
    return out


def history(data: str | None) -> None:
    """``normfree train --spp-every 8``: the SPP over training of nf_cifar_resnet20 on 2000 CIFAR-10 images,
    and that run's plot.png."""
    with tempfile.TemporaryDirectory() as tmp:
        run = _train({"model": "nf_cifar_resnet20", "data": f"npz:{data}", "train_subset": 2000,
                      "test_subset": 1000, "epochs": 3, "batch_size": 64, "lr": 0.05, "spp_every": 8,
                      "device": "cpu"}, Path(tmp) / "run")
        shutil.copy(run / "spp" / "spp_history.png", IMG / "spp_history_nf_cifar_resnet20.png")
        from normfree.analysis import load_json

        for r in load_json(run / "spp" / "spp_history.json"):  # the numbers the doc quotes
            print(f"step {r.step}: skip gains {min(r.skip_gains):.3g}–{max(r.skip_gains):.3g}, var after "
                  f"blocks 1/4/7 {r.var[0]:.3f}/{r.var[3]:.3f}/{r.var[6]:.3f}, last block {r.var[-1]:.3f}, "
                  f"residual var {min(r.res_var):.3f}–{max(r.res_var):.3f}")
        shutil.copy(run / "plot.png", IMG / "run_plot_nf_cifar_resnet20.png")


def curves(data: str | None) -> None:
    """``normfree compare`` learning curves: NF vs BN ResNet-20, two seeds, 512 CIFAR-10 images."""
    from normfree.train.compare import compare

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "cmp"
        rows = compare(["nf_cifar_resnet20", "bn_cifar_resnet20"], f"npz:{data}", out, batch_sizes=(32,),
                       epochs=3, lr=0.05, lr_batch=32, train_subset=512, test_subset=500, seed=(0, 1),
                       device="cpu")
        shutil.copy(out / "curves.png", IMG / "compare_curves_cifar_resnet20.png")
        print(json.dumps([(r["model"], r["seed"], r["test_top1"]) for r in rows]))


FIGURES = {f.__name__: f for f in (resnet50, baselines, grads, init_pn, speedrun, history, curves)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", help="CIFAR-10 npz folder (for history and curves)")
    parser.add_argument("--only", nargs="+", choices=list(FIGURES), default=list(FIGURES))
    args = parser.parse_args()
    if {"history", "curves"} & set(args.only) and not args.data:
        parser.error("--data is needed for history and curves")
    for name in args.only:
        print(f"== {name}", flush=True)
        FIGURES[name](args.data)


if __name__ == "__main__":
    main()
