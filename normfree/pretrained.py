"""A model from a checkpoint in one call, and the eval preprocessing that goes with it (timm's spirit).

``normfree.load(path)`` reads what ``normfree train`` (or ``normfree convert``) recorded in the file,
the model name and options, class count and names, input channels, normalization and image size, and
returns the model in eval mode with that record as ``model.pretrained_cfg`` (and ``model.classes``).
``create_transform(data_config(model))`` then turns an image into the tensor the model was evaluated on.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, DataError
from .models.variants import IMAGENET_MEAN, IMAGENET_STD
from .registry import create_model
from .safeio import one_line, read_safetensors


def checkpoint_info(path: str | Path, metadata: dict[str, str] | None = None) -> dict[str, Any]:
    """What a checkpoint says about its model, without building it: ``model``, ``model_kwargs`` (including
    ``num_classes`` and ``in_chans``), ``pretrained_cfg``, ``classes``; None values where it does not say.

    Reads ``normfree train`` checkpoints and ``normfree convert`` outputs (``metadata``: the file's raw
    safetensors metadata when already read); any other file raises ``CheckpointError``.
    """
    from .train.checkpoint import TRAIN_META_KEYS, checkpoint_meta

    if metadata is None:
        metadata = read_safetensors(path)[1]
    if "normfree" in metadata:
        meta = checkpoint_meta(path, metadata, TRAIN_META_KEYS)
        kwargs = {**meta.get("model_kwargs", {}), "num_classes": meta["num_classes"]}
        if meta["in_chans"] != 3:
            kwargs["in_chans"] = meta["in_chans"]
        cfg = meta.get("pretrained_cfg") or {"mean": meta["mean"], "std": meta["std"]}
        return {"model": meta["model"], "model_kwargs": kwargs, "pretrained_cfg": cfg,
                "classes": meta.get("classes")}
    if "model" in metadata:  # normfree convert
        try:
            kwargs = json.loads(metadata.get("model_kwargs", "{}"))
            cfg = json.loads(metadata.get("pretrained_cfg", "null"))
        except json.JSONDecodeError as err:
            raise CheckpointError(f"{path}: damaged metadata ({one_line(err)})") from None
        return {"model": metadata["model"], "model_kwargs": kwargs, "pretrained_cfg": cfg, "classes": None}
    raise CheckpointError(f"{path} names no model in its metadata (not written by normfree train or "
                          "normfree convert); build the model with normfree.create_model(NAME) and load "
                          "the weights with normfree.train.checkpoint.load_weights(model, path)")


def load(path: str | Path, *, ema: bool | None = None, device: str | torch.device = "cpu") -> nn.Module:
    """The model of a checkpoint, in eval mode, with ``pretrained_cfg`` and ``classes`` from its metadata.

    ``ema``: take the EMA weights (None: when the checkpoint has them, as ``best.safetensors`` is chosen
    by them); False: the raw weights.
    """
    from .train.checkpoint import split_prefix

    tensors, metadata = read_safetensors(path)
    info = checkpoint_info(path, metadata)
    model = create_model(info["model"], **info["model_kwargs"])
    if any(k.startswith("model.") for k in tensors):  # a train checkpoint: model., optim., ema. tensors
        has_ema = any(k.startswith("ema.") for k in tensors)
        if ema and not has_ema:
            raise CheckpointError(f"{path} has no EMA weights (trained with --ema-decay 0); pass ema=False")
        tensors = split_prefix(tensors, "ema" if (has_ema if ema is None else ema) else "model")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: the weights do not fit {info['model']}: {one_line(err)[:300]}") from None
    model.pretrained_cfg = {**getattr(model, "pretrained_cfg", {}), **(info["pretrained_cfg"] or {})}
    model.classes = info["classes"]
    return model.to(device).eval()


def data_config(model: nn.Module) -> dict[str, Any]:
    """The eval preprocessing of ``model`` from its ``pretrained_cfg`` (timm's ``resolve_data_config``
    keys): ``input_size`` (the test size, what ``normfree eval`` scores at), ``interpolation``, ``mean``,
    ``std``, ``crop_pct``, ``crop_mode``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = cfg.get("test_input_size") or cfg.get("input_size") or (3, 224, 224)
    return {"input_size": tuple(int(s) for s in size), "interpolation": cfg.get("interpolation", "bicubic"),
            "mean": tuple(cfg.get("mean", IMAGENET_MEAN)), "std": tuple(cfg.get("std", IMAGENET_STD)),
            "crop_pct": float(cfg.get("crop_pct", 0.875)), "crop_mode": cfg.get("crop_mode", "center")}


class EvalTransform:
    """Image → normalized float CHW tensor: resize (short side to size/crop_pct, or the whole image to
    (size/crop_pct)² for ``crop_mode="squash"``), centre crop, scale to [0, 1], normalize.

    Takes a PIL image, an H×W or H×W×C numpy array, or a C×H×W tensor (uint8 in 0..255 or float in
    [0, 1]). Channels are matched to the model: RGB becomes gray by the channel mean, gray is repeated.
    """

    def __init__(self, config: dict[str, Any]) -> None:
        self.channels, self.height, self.width = config["input_size"]
        self.crop_pct, self.crop_mode = float(config["crop_pct"]), config["crop_mode"]
        self.interpolation = config["interpolation"]
        self.mean = torch.tensor(config["mean"], dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(config["std"], dtype=torch.float32).view(-1, 1, 1)

    def _tensor(self, image: Any) -> torch.Tensor:
        if isinstance(image, torch.Tensor):
            x = image if image.ndim == 3 else image[None]
        else:
            a = np.asarray(image)  # PIL images and arrays are H×W(×C)
            a = a[..., None] if a.ndim == 2 else a
            if a.ndim != 3:
                raise DataError(f"expected an H×W or H×W×C image, got an array of shape {a.shape}")
            x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)
        x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
        if x.shape[0] == 4:  # RGBA: drop alpha
            x = x[:3]
        if x.shape[0] != self.channels:
            if self.channels == 1:
                x = x.mean(0, keepdim=True)
            elif x.shape[0] == 1:
                x = x.expand(self.channels, -1, -1)
            else:
                raise DataError(f"the model takes {self.channels} channels, the image has {x.shape[0]}")
        return x

    def _resize(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        if (h, w) == tuple(x.shape[-2:]):
            return x
        mode = self.interpolation if self.interpolation in ("bilinear", "bicubic") else "bilinear"
        return F.interpolate(x[None], size=(h, w), mode=mode, antialias=True, align_corners=False)[0]

    def __call__(self, image: Any) -> torch.Tensor:
        x = self._tensor(image)
        th, tw = self.height, self.width
        h, w = x.shape[-2:]
        if self.crop_mode == "squash":
            x = self._resize(x, math.floor(th / self.crop_pct), math.floor(tw / self.crop_pct))
        elif (h, w) != (th, tw):  # short side to size / crop_pct, as the eval data loader does
            s = round(min(th, tw) / self.crop_pct) / min(h, w)
            x = self._resize(x, max(th, round(h * s)), max(tw, round(w * s)))
        top, left = (x.shape[-2] - th) // 2, (x.shape[-1] - tw) // 2
        x = x[:, top:top + th, left:left + tw].clamp(0, 1)
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return (f"EvalTransform(size={self.channels}x{self.height}x{self.width}, crop_pct={self.crop_pct}, "
                f"crop_mode={self.crop_mode!r}, interpolation={self.interpolation!r}, "
                f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()})")


def create_transform(config: dict[str, Any]) -> EvalTransform:
    """The eval transform of a :func:`data_config` (torch only: no torchvision needed)."""
    return EvalTransform(config)
