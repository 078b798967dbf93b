"""``normfree eval``: top-1/top-5 of a checkpoint's raw and EMA weights."""
from __future__ import annotations

import argparse
import copy

from ..errors import CheckpointError, DataError


def evaluate_checkpoint(path: str, data: str | None = None, subset: int = 0, device: str = "auto",
                        batch_size: int = 256) -> dict[str, dict[str, float]]:
    """Evaluate ``path`` on its training run's test split (or on ``data``); keys ``raw`` and ``ema``."""
    import torch

    from ..checks import NONNEGATIVE_INT, POSITIVE_INT, check_number, require_device
    from ..train.checkpoint import TRAIN_META_KEYS, load_checkpoint, split_prefix
    from ..train.data import FolderData, load_data
    from ..train.distributed import resolve_device
    from ..train.trainer import build_model, evaluate, image_defaults

    check_number("--subset", subset, NONNEGATIVE_INT)
    check_number("--batch-size", batch_size, POSITIVE_INT)
    dev = resolve_device(require_device("--device", device))
    tensors, meta = load_checkpoint(path, TRAIN_META_KEYS)
    cfg = meta["config"]
    model = build_model(meta["model"], meta["num_classes"], meta["in_chans"], meta.get("model_kwargs", {}))
    _, test_size, crop_pct = image_defaults(model)  # the model's pretrained_cfg
    test = load_data(data or cfg.get("data", "demo"), "test", subset, cfg.get("image_size") or test_size,
                     classes=meta.get("classes"))
    if isinstance(test, FolderData):
        test.crop_pct = crop_pct
    if len(test.y) and int(test.y.max()) >= meta["num_classes"]:
        raise DataError(f"{test.name} has labels up to {int(test.y.max())} but the checkpoint's model has "
                        f"{meta['num_classes']} classes")
    if getattr(test, "x", None) is not None and test.x.shape[-1] != meta["in_chans"]:
        raise DataError(f"{test.name} has {test.x.shape[-1]} channels but the checkpoint's model takes "
                        f"{meta['in_chans']}")
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
    results = evaluate_checkpoint(args.checkpoint, args.data, args.subset, args.device, args.batch_size)
    for kind, r in results.items():
        print(f"{kind:>4}: top-1 {r['top1']:.2f}%  top-5 {r['top5']:.2f}%  loss {r['loss']:.4f}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="top-1/top-5 of a checkpoint (raw and EMA weights)")
    p.add_argument("checkpoint", help="a .safetensors checkpoint written by normfree train")
    p.add_argument("--data", help="data spec (default: the one the checkpoint was trained on)")
    p.add_argument("--subset", type=int, default=0, help="first N test images only (0 = all)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=256)
    p.set_defaults(func=_run)
