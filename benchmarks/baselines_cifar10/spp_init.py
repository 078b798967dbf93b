"""SPP at initialization of Proxy Norm (LN+PN, GN+PN and their LN/GN twins), GradInit and AutoInit, next
to the NF-ResNet-20 and its BN twin: the figure of docs/baselines.md.

Every net is built with seed 0 as training builds it; GradInit and AutoInit are applied by the trainer
(``--init``) on the training data of ``DATA_DIR``, then all are measured on the same seeded N(0, 1)
batch of 16, as ``normfree compare`` does. GradInit runs a reduced budget here (``GRADINIT``: 10
iterations at batch 64 instead of the training runs' 100 at batch 128): one iteration costs about 8
training steps on CPU, and the figure must stay cheap on a shared machine. The NF net gets skip gains 1 (officially 0, which
makes every block the identity at init), as in the other baseline figure.

Usage (repository root)::

    DATA_DIR=path/to/cifar10_npz_dir OMP_NUM_THREADS=1 python benchmarks/baselines_cifar10/spp_init.py

Writes ``docs/img/spp_init_pn_gradinit_autoinit.png`` and, in ``benchmarks/baselines_cifar10/spp_init/``,
``spp.{json,csv}`` and the trainer's ``init.json`` of GradInit (scales, passes, wall time) and AutoInit.
"""
from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

import normfree
from normfree.analysis import diagnose, plot_spp, save_csv, save_json, signal_propagation
from normfree.train import TrainConfig, Trainer

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(__file__).resolve().parent / "spp_init"
FIGURE = ROOT / "docs" / "img" / "spp_init_pn_gradinit_autoinit.png"
BUILT = [("nf_cifar_resnet20", {"skipinit_gain": 1.0}, "NF (skip gain 1)"), ("bn_cifar_resnet20", {}, "BN"),
         ("lnpn_cifar_resnet20", {}, "LN+PN"), ("gnpn_cifar_resnet20", {}, "GN+PN"),
         ("ln_cifar_resnet20", {}, "LN"), ("gn_cifar_resnet20", {}, "GN"),
         ("gradinit_cifar_resnet20", {}, "plain BN-free, He init")]
GRADINIT = "gradinit:iters=10,batch=64"
TRAINED_INIT = [("gradinit_cifar_resnet20", GRADINIT, "GradInit (10 it., batch 64)"),
                ("autoinit_cifar_resnet20", "autoinit", "AutoInit")]


def initialized_by_trainer(name: str, init: str, data: str, work: Path) -> torch.nn.Module:
    """The model as ``normfree train --model NAME --init INIT --seed 0`` starts from it."""
    run = work / name
    trainer = Trainer(TrainConfig(model=name, data=data, out_dir=str(run), device="cpu", seed=0, init=init))
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.copy(run / "init.json", OUT / f"{name.split('_')[0]}_init.json")
    return trainer.model


def main() -> int:
    data_dir = os.environ.get("DATA_DIR")
    if not data_dir or not (Path(data_dir) / "train.npz").exists():
        print("set DATA_DIR to a folder holding train.npz and test.npz", file=sys.stderr)
        return 2
    results = []
    for name, kwargs, label in BUILT:
        torch.manual_seed(0)
        model = normfree.create_model(name, **kwargs)
        results.append((label, signal_propagation(model, input_shape=(16, 3, 32, 32), seed=0)))
    with tempfile.TemporaryDirectory() as work:
        for name, init, label in TRAINED_INIT:
            start = time.perf_counter()
            model = initialized_by_trainer(name, init, f"npz:{data_dir}", Path(work))
            print(f"{label}: initialized in {time.perf_counter() - start:.1f} s", flush=True)
            results.append((label, signal_propagation(model, input_shape=(16, 3, 32, 32), seed=0)))
    for label, r in results:
        r.model = label
    spp = [r for _, r in results]
    OUT.mkdir(parents=True, exist_ok=True)
    save_json(spp, OUT / "spp.json")
    save_csv(spp, OUT / "spp.csv")
    plot_spp(spp, FIGURE, title="ResNet-20 at init: Proxy Norm, GradInit, AutoInit vs NF and BN "
                                "(N(0,1) inputs, batch 16)")
    print(diagnose(spp))
    print(f"wrote {FIGURE.relative_to(ROOT)} and {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
