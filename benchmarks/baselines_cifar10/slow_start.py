"""Why revisited BN and GN+WS barely learn at the reduced budget: 30 full-batch steps on 64 CIFAR-10 test
images (SGD-Nesterov, lr 0.05, momentum 0.9, weight decay 5e-4), changing one option at a time.

Usage: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/baselines_cifar10/slow_start.py [DATA_DIR]
"""
from __future__ import annotations

import sys

import numpy as np
import torch
import torch.nn.functional as F

from normfree.registry import get_entry
from normfree.train.optim import build_param_groups

CASES = [  # (registered name, builder overrides, parameter groups)
    ("bn_cifar_resnet20", {}, "auto"),
    ("revbn_cifar_resnet20", {}, "auto"),
    ("revbn_cifar_resnet20", {}, "default"),
    ("revbn_cifar_resnet20", {"fc_init_std": 0.07}, "auto"),  # ~ PyTorch's default Linear init
    ("revbn_cifar_resnet20", {"norm_kwargs": {"scale_init": 1.0}}, "auto"),
    ("gnws_cifar_resnet20", {}, "auto"),
    ("gnws_cifar_resnet20", {"ws": "official"}, "auto"),                     # GN + scaled WS
    ("gnws_cifar_resnet20", {"ws": "official", "std_conv": False}, "auto"),  # GN, plain convs
    ("gnws_cifar_resnet20", {"norm_kwargs": {"groups": 8}}, "auto"),
]


def main(data_dir: str) -> None:
    torch.set_num_threads(1)
    with np.load(f"{data_dir}/test.npz") as d:
        x = torch.from_numpy(d["x"][:64]).permute(0, 3, 1, 2).float() / 255
        y = torch.from_numpy(d["y"][:64]).long()
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)
    for name, kw, groups in CASES:
        entry = get_entry(name)  # the fixed options may be overridden here, for the experiment only
        torch.manual_seed(0)
        model = entry.builder(**{**entry.fixed, **entry.defaults, **kw}).train()
        model.model_name = name
        opt = torch.optim.SGD(build_param_groups(model, groups, 0.05, 5e-4), lr=0.05, momentum=0.9,
                              nesterov=True)
        for g in opt.param_groups:
            g["lr"] = 0.05 * g["lr_scale"]
        losses = []
        for _ in range(30):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        print(f"{name:22s} {str(kw):42s} {groups:8s} loss {losses[0]:.3f} -> {losses[-1]:.3f}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/baselines_cifar10/slow_start.py CIFAR10_NPZ_FOLDER")
    main(sys.argv[1])
