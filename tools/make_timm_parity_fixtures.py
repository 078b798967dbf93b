"""Generate the timm-parity fixtures in tests/fixtures/ by running timm's own ``NormFreeNet``.

Usage (timm in its own venv; timm is NOT a dependency of normfree and none of its code is copied here):

    python tools/make_timm_parity_fixtures.py --out tests/fixtures

For each timm name that ``normfree.convert.from_timm`` supports, a reduced-width instance is built from
timm's own config function for that family (``_dm_nfnet_cfg``, ``_nfres_cfg``, ``_nfreg_cfg``: the
functions timm's registered configs are made with, which is checked first), so timm's channel rounding,
stem, attention placement, padding and γ placement all apply. Every gain, bias and skip gain is then
perturbed and the classifier redrawn so that every parameter affects the logits, and a fixed random
batch of odd-sized images runs in fp32 eval mode. Written per name: ``timm_<name>.npz`` with
``x`` (NCHW input), ``logits``, ``config`` (the timm ``NfCfg`` as text) and ``state_dict/<timm key>``.
"""
from __future__ import annotations

import argparse
import dataclasses
import os

import numpy as np
import torch

IMAGE_SHAPE = (2, 3, 37, 45)  # NCHW, odd sizes on purpose (SAME padding, ceil-mode average pool)
NUM_CLASSES = 7


def tiny_configs() -> dict:
    """timm name → reduced ``NfCfg`` made with timm's config function for that family."""
    from timm.models import nfnet

    full = {"dm_nfnet_f0": nfnet._dm_nfnet_cfg(depths=(1, 2, 6, 3)),
            "nf_resnet50": nfnet._nfres_cfg(depths=(3, 4, 6, 3)),
            "nf_regnet_b1": nfnet._nfreg_cfg(depths=(2, 4, 7, 7))}
    for name, cfg in full.items():  # the functions below are the ones timm builds these names with
        assert nfnet.model_cfgs[name] == cfg, name
    return {
        # stem_chs stays 128 (the deep-quad stem is 16, 32, 64, 128 as in every F model)
        "dm_nfnet_f0": dataclasses.replace(
            nfnet._dm_nfnet_cfg(depths=(1, 2, 1, 1), channels=(256, 64, 128, 128)), group_size=16),
        # real depths; widths ×1/8 with the 7×7 stem scaled alike (64 → 8)
        "nf_resnet50": dataclasses.replace(
            nfnet._nfres_cfg(depths=(3, 4, 6, 3), channels=(32, 64, 128, 256)), stem_chs=8),
        "nf_regnet_b1": nfnet._nfreg_cfg(depths=(1, 2, 1, 1), channels=(16, 32, 64, 128)),
    }


@torch.no_grad()
def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Move gains, biases and skip gains off their init (the last conv gain and skip gains start at 0)."""
    for key, p in model.named_parameters():
        if key.endswith(("gain", "skipinit_gain")):
            p.add_(torch.rand(p.shape, generator=gen) - 0.5)
        elif key.endswith("bias"):
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
        elif key == "head.fc.weight":
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/fixtures")
    args = parser.parse_args()
    import timm
    from timm.models.nfnet import NormFreeNet

    os.makedirs(args.out, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(IMAGE_SHAPE, generator=gen)
    for name, cfg in tiny_configs().items():
        torch.manual_seed(0)
        model = NormFreeNet(cfg, num_classes=NUM_CLASSES).eval()
        perturb(model, gen)
        with torch.no_grad():
            logits = model(x)
        state = {f"state_dict/{k}": v.numpy() for k, v in model.state_dict().items()}
        path = os.path.join(args.out, f"timm_{name}.npz")
        np.savez_compressed(path, x=x.numpy(), logits=logits.numpy(), config=np.array(repr(cfg)),
                            timm_version=np.array(timm.__version__), **state)
        print(f"{name}: {len(state)} tensors, {sum(v.size for v in state.values())} values, "
              f"logits std {logits.std():.4f} -> {path}")


if __name__ == "__main__":
    main()
