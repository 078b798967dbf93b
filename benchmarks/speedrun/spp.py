"""SPPs of the speedrun nets at initialisation, on real CIFAR-10 images: the figure and table of
docs/speedrun.md.

Both nets get the recipe's setup (whitening from the first 5,000 training images; the NF net also its
one-batch data-dependent init on the first 1,024), then the signal entering every GELU of the conv
groups is measured on 512 *other* training images (BN with batch statistics, as the paper measures).
A third curve, the NF net without the data-dependent init, shows what that init fixes.

    python benchmarks/speedrun/spp.py --data npz:DIR --out docs/img
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

import normfree
from normfree.analysis import plot_spp, save_csv, signal_propagation
from normfree.train.speedrun import load_cifar


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="npz:DIR with train.npz / test.npz")
    ap.add_argument("--out", default="docs/img")
    args = ap.parse_args()
    (x, _), _ = load_cifar(args.data, torch.device("cpu"), train_subset=6000, test_subset=1)
    probe = x[5000:5512]
    results = []
    for label, name, init in (("bn_cifar_airbench94", "bn_cifar_airbench94", False),
                              ("nf_cifar_speedrun", "nf_cifar_speedrun", True),
                              ("nf_cifar_speedrun (no data init)", "nf_cifar_speedrun", False)):
        torch.manual_seed(0)
        model = normfree.create_model(name)
        model.whiten.fit(x[:5000])
        if init:
            model.init_from_data(x[:1024])
        res = signal_propagation(model, probe, blocks=model.preactivation_points())
        res.model = label
        results.append(res)
        print(f"{label:34s} sq_mean " + " ".join(f"{v:.3f}" for v in res.sq_mean)
              + " | var " + " ".join(f"{v:.3f}" for v in res.var))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_csv(results, out / "spp_speedrun.csv")
    plot_spp(results, out / "spp_speedrun.png", title="speedrun nets at init: signal entering each GELU")


if __name__ == "__main__":
    main()
