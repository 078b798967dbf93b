"""``normfree eval``: top-1/top-5 of a checkpoint's raw and EMA weights."""
from __future__ import annotations

import argparse
import copy
from typing import Callable

from ..errors import CheckpointError, DataError
from .options import add_batch_size, add_data, add_image_size, alias


def evaluate_checkpoint(path: str, data: str | None = None, test_subset: int = 0, device: str = "auto",
                        batch_size: int = 256, image_size: int | None = None,
                        log: Callable[[str], None] | None = None) -> dict[str, dict[str, float]]:
    """Evaluate ``path`` on its training run's test split (or on ``data``); keys ``raw`` and ``ema``.

    Class count, channels, normalization and image size come from the checkpoint; ``image_size``
    overrides the size of ImageFolder data. ``log`` receives one line saying what is scored and how.
    """
    import torch

    from ..checks import NONNEGATIVE_INT, POSITIVE_INT, check_number, require_device
    from ..train.checkpoint import TRAIN_META_KEYS, load_checkpoint, split_prefix
    from ..train.data import FolderData, load_data
    from ..train.distributed import resolve_device
    from ..train.trainer import build_model, evaluate, image_defaults

    check_number("--test-subset", test_subset, NONNEGATIVE_INT)
    check_number("--batch-size", batch_size, POSITIVE_INT)
    if image_size is not None:
        check_number("--image-size", image_size, POSITIVE_INT)
    dev = resolve_device(require_device("--device", device))
    tensors, meta = load_checkpoint(path, TRAIN_META_KEYS)
    cfg = meta["config"]
    model = build_model(meta["model"], meta["num_classes"], meta["in_chans"], meta.get("model_kwargs", {}))
    _, test_size, crop_pct = image_defaults(model)  # the model's own; the checkpoint's record wins below
    trained = meta.get("pretrained_cfg") or {}
    if image_size is None:  # what the run evaluated at (older checkpoints: its crop size or the model's)
        image_size = (int(trained["test_input_size"][-1]) if "test_input_size" in trained
                      else cfg.get("image_size") or test_size)
    test = load_data(data or cfg.get("data", "demo"), "test", test_subset, image_size,
                     classes=meta.get("classes"))
    if isinstance(test, FolderData):
        test.crop_pct = float(trained.get("crop_pct", crop_pct))
    if len(test.y) and int(test.y.max()) >= meta["num_classes"]:
        raise DataError(f"{test.name} has labels up to {int(test.y.max())} but the checkpoint's model has "
                        f"{meta['num_classes']} classes")
    if getattr(test, "x", None) is not None and test.x.shape[-1] != meta["in_chans"]:
        raise DataError(f"{test.name} has {test.x.shape[-1]} channels but the checkpoint's model takes "
                        f"{meta['in_chans']}")
    if log is not None:
        size = (f"{test.size}x{test.size} (crop {test.crop_pct:g})" if isinstance(test, FolderData)
                else "x".join(map(str, test.x.shape[1:3])))
        fmt = ", ".join(f"{v:.3f}" for v in meta["mean"]), ", ".join(f"{v:.3f}" for v in meta["std"])
        log(f"eval {path}: {meta['model']} ({meta['num_classes']} classes) on {test.name} "
            f"({'given' if data else 'from the checkpoint'}), test split: {len(test)} images at {size}, "
            f"mean ({fmt[0]}) std ({fmt[1]}), batch {batch_size}, device {dev}")
    mean = torch.tensor(meta["mean"], device=dev).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"], device=dev).view(1, -1, 1, 1)
    results = {}
    for kind in ("model", "ema"):
        weights = split_prefix(tensors, kind)
        if weights:
            net = copy.deepcopy(model)
            try:
                net.load_state_dict(weights)
            except RuntimeError as err:
                raise CheckpointError(f"{path}: the {kind} weights do not fit {meta['model']}: "
                                      f"{' '.join(str(err).split())[:200]}") from None
            results["raw" if kind == "model" else "ema"] = evaluate(net.to(dev), test, mean, std, dev,
                                                                    batch_size, desc=f"eval {kind}")
    return results


def _run(args: argparse.Namespace) -> None:
    results = evaluate_checkpoint(args.checkpoint, args.data, args.test_subset, args.device, args.batch_size,
                                  args.image_size, log=print)
    for kind, r in results.items():
        print(f"{kind:>4}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint (raw and EMA weights)",
                       description="Score a checkpoint of normfree train on a test split. The model, class "
                                   "count, channels, normalization and image size come from the checkpoint; "
                                   "the line before the scores says which data, how many images and which "
                                   "settings were used.")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by normfree train")
    add_data(p, "test data (default: the data the checkpoint was trained on)")
    p.add_argument("--test-subset", type=int, default=0, metavar="N", help="first N test images only (0 = all)")
    alias(p, "--subset", "--test-subset", "test_subset", type=int)
    p.add_argument("--device", default="auto")
    add_batch_size(p, 256, "images per forward pass (default: 256)")
    add_image_size(p, None, "ImageFolder crop size (default: the checkpoint's test size)")
    p.set_defaults(func=_run)
