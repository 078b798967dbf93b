"""``normfree convert --from deepmind|timm SRC --model NAME --out FILE.safetensors``."""
from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

from ..checks import POSITIVE_INT, check_number, check_out_file
from ..errors import CheckpointError
from ..safeio import atomic_write
from .options import add_flag


def load_torch_state_dict(path: str, allow_pickle: bool) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` (safe), or from a pickled ``.pth``/``.bin`` only when allowed."""
    from ..safeio import read_safetensors, torch_load

    if path.endswith(".safetensors"):
        return read_safetensors(path)[0]
    if not allow_pickle:
        raise CheckpointError(f"{path} is not a .safetensors file; loading it means unpickling it. Pass "
                              "--allow-pickle to read it with torch.load(weights_only=True), which builds "
                              "only tensors and containers")
    state = torch_load(path)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


def source_classes(params: dict[str, Any], source: str) -> int | None:
    """The class count of a source checkpoint's classifier (DeepMind ``linear/w`` is [in, out], timm's
    ``head.fc.weight`` [out, in]); None when it has none."""
    key, axis = ("linear/w", -1) if source == "deepmind" else ("head.fc.weight", 0)
    return int(params[key].shape[axis]) if key in params and len(params[key].shape) == 2 else None


def _run(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    from ..convert import from_deepmind, from_timm
    from ..convert.deepmind import read_params

    if not os.path.isfile(args.src):
        raise CheckpointError(f"source checkpoint {args.src} does not exist or is not a file")
    check_out_file("--out", args.out)
    params: dict[str, Any] = (read_params(args.src, allow_pickle=args.allow_pickle) if args.source == "deepmind"
                              else load_torch_state_dict(args.src, args.allow_pickle))
    classes = source_classes(params, args.source)
    if args.num_classes is not None:
        classes = check_number("--num-classes", args.num_classes, POSITIVE_INT)
    kwargs: dict[str, Any] = {} if classes is None else {"num_classes": classes}
    if args.source == "deepmind":
        rooted = {f"net/{k}": v for k, v in params.items()}  # read once: from_deepmind strips a root again
        model = from_deepmind(args.model, rooted, **kwargs)
    else:
        model = from_timm(params, args.model, **kwargs)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    meta = {"model": model.model_name, "source": args.source, "source_model": args.model,
            "model_kwargs": json.dumps(getattr(model, "convert_kwargs", kwargs)),
            "pretrained_cfg": json.dumps(getattr(model, "pretrained_cfg", None))}
    atomic_write(args.out, lambda tmp: save_file(state, tmp, metadata=meta))
    where = "--num-classes" if args.num_classes is not None else "the source's classifier"
    print(f"wrote {args.out}: {model.model_name} ({len(state)} tensors, {model.num_classes} classes from "
          f"{where}) from {args.source} weights {args.src}; load it with normfree.load({args.out!r})")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert DeepMind (Haiku .npz) or timm weights to safetensors",
                       description="Load official DeepMind Haiku parameters (.npz keyed 'module/~/…/param')"
                                   " or a timm state dict into a normfree model, strictly (every tensor "
                                   "must match), and save its state dict as safetensors.")
    p.add_argument("src", help="source checkpoint (.npz for deepmind; .safetensors or .pth for timm)")
    p.add_argument("--from", dest="source", required=True, choices=("deepmind", "timm"))
    p.add_argument("--model", required=True,
                   help="deepmind: our model name (nfnet_f0, nf_regnet_b1, ...); timm: the timm name "
                        "(dm_nfnet_f0 ... dm_nfnet_f6, nf_resnet50, nf_regnet_b1)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the source classifier's)")
    add_flag(p, "--allow-pickle",
             help="allow a pickle-format source (the official DeepMind files, timm .pth); it is read "
                        "with a restricted unpickler that builds only containers and arrays, never code")
    p.set_defaults(func=_run)
