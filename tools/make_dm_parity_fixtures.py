"""Generate the DeepMind-parity fixtures in tests/fixtures/ by running the official JAX/Haiku code.

Usage (JAX + dm-haiku in their own venv; the official ``nfnets`` package is NOT part of this repo):

    python tools/make_dm_parity_fixtures.py --official /path/containing/nfnets --out tests/fixtures

``/path/containing/nfnets`` is a checkout of google-deepmind/deepmind-research (or a copy of its
``nfnets/`` folder). For each family a tiny instance is built with the official classes (extra variant
rows are added to the official tables at run time), parameters are initialized and then perturbed so
that every gain, bias, skip gain and classifier weight matters, and a fixed random batch of odd-sized
images (exercising TF-'SAME' padding) is run in fp32 inference mode. Written per family:
``dm_<family>.params.npz`` (flat Haiku keys ``module/~/…/param``, HWIO / [in, out] layouts) and
``dm_<family>.io.npz`` (``x`` NHWC input, ``logits``).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

TINY = {
    # family: (module, class, variant row added to the official table, constructor kwargs)
    "nf_resnet": ("nf_resnet", "NF_ResNet", {"depth": [1, 2, 1, 1]},
                  {"width": 1, "drop_rate": 0.0, "stochdepth_rate": 0.1}),
    "nf_regnet": ("nf_regnet", "NF_RegNet",
                  {"width": [16, 32, 64, 128], "depth": [1, 2, 1, 1], "train_imsize": 32,
                   "test_imsize": 32, "drop_rate": 0.0}, {"activation": "silu"}),
    "nfnet": ("nfnet", "NFNet",
              {"width": [32, 64, 128, 128], "depth": [1, 2, 1, 1], "group_width": [8] * 4,
               "train_imsize": 32, "test_imsize": 32, "drop_rate": 0.0}, {}),
}
IMAGE_SHAPE = (2, 37, 45, 3)  # NHWC, odd sizes on purpose
NUM_CLASSES = 7


def perturb(params, rng):
    """Move every parameter away from its init so the comparison exercises all of them."""
    out = {}
    for module, leaves in params.items():
        out[module] = {}
        for name, value in leaves.items():
            v = np.asarray(value, dtype=np.float32)
            if name in ("gain", "skip_gain"):
                v = v + rng.uniform(-0.5, 0.5, v.shape).astype(np.float32)
            elif name in ("bias", "b"):
                v = v + 0.1 * rng.standard_normal(v.shape).astype(np.float32)
            elif module.endswith("/~/linear") and name == "w" and "squeeze_excite" not in module:
                v = 0.1 * rng.standard_normal(v.shape).astype(np.float32)  # classifier (RegNet: zeros)
            out[module][name] = v
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, help="directory that contains the nfnets package")
    parser.add_argument("--out", default="tests/fixtures")
    args = parser.parse_args()
    sys.path.insert(0, os.path.abspath(args.official))
    import haiku as hk
    import importlib
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(IMAGE_SHAPE).astype(np.float32)
    for family, (mod, cls_name, row, kwargs) in TINY.items():
        cls = getattr(importlib.import_module(f"nfnets.{mod}"), cls_name)
        cls.variant_dict["Tiny"] = row

        def forward(inputs, cls=cls, kwargs=kwargs):
            net = cls(NUM_CLASSES, variant="Tiny", **kwargs)
            return net(inputs, is_training=False)["logits"]

        fn = hk.without_apply_rng(hk.transform(forward))
        params = perturb(fn.init(jax.random.PRNGKey(0), x), rng)
        logits = np.asarray(fn.apply(params, x), dtype=np.float32)
        flat = {f"{m}/{n}": v for m, leaves in params.items() for n, v in leaves.items()}
        np.savez_compressed(os.path.join(args.out, f"dm_{family}.params.npz"), **flat)
        np.savez_compressed(os.path.join(args.out, f"dm_{family}.io.npz"), x=x, logits=logits)
        print(f"{family}: {len(flat)} tensors, {sum(v.size for v in flat.values())} values, "
              f"logits std {logits.std():.4f}")


if __name__ == "__main__":
    main()
