"""``normfree train``: every :class:`~normfree.train.config.TrainConfig` field is a flag; ``--config`` a YAML."""
from __future__ import annotations

import argparse
import dataclasses
import json
from typing import TYPE_CHECKING, Any

from .options import BoolValueAction, HelpFormatter, add_flag

if TYPE_CHECKING:
    from ..train.config import TrainConfig


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _field_type(f: dataclasses.Field) -> Any:
    t = str(f.type)
    if t.startswith("dict"):
        return json.loads
    if t.startswith("int"):
        return int
    return float if t == "float" else str


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's config, layered: defaults < --recipe < --config YAML (or, resuming, the checkpoint's
    config) < flags; ``model_kwargs`` merge key by key."""
    from ..train.checkpoint import TRAIN_META_KEYS, load_checkpoint
    from ..train.config import TrainConfig
    from ..train.recipes import layer_values, load_recipe

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if getattr(args, f.name) is not None and f.name != "recipe"}
    # DP's noise is set by one of two knobs: the one named here replaces a recipe's or config's other one
    for named, other in (("noise_multiplier", "epsilon"), ("epsilon", "noise_multiplier")):
        if overrides.get(named) and other not in overrides:
            overrides[other] = 0.0
    layers = [load_recipe(args.recipe)] if args.recipe else []
    if args.config:
        layers.append(TrainConfig.read_yaml(args.config))
    elif args.resume:  # continue with the checkpoint's recipe unless flags say otherwise
        layers.append(load_checkpoint(args.resume, TRAIN_META_KEYS)[1]["config"])
    return TrainConfig.from_dict(layer_values(*layers, overrides))


def _run(args: argparse.Namespace) -> None:
    from ..train.trainer import Trainer

    if args.recipe == "list":
        from ..train.recipes import format_recipes

        print(format_recipes())
        return
    trainer = Trainer(config_from_args(args), resume=args.resume, overwrite=args.overwrite)
    summary = trainer.fit()
    if not trainer.dist.main:  # under torchrun the summary is rank 0's to print
        return
    keys = ("model", "steps", "wall_time_s", "test_top1", "test_top5", "ema_test_top1", "best_top1")
    print("summary: " + ", ".join(f"{k}={summary[k]:.4g}" if isinstance(summary[k], float) else
                                  f"{k}={summary[k]}" for k in keys if k in summary))


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ..train.config import TrainConfig

    p = sub.add_parser("train", help="train a model (flags, a YAML --config, torchrun for DDP)",
                       description="Train a model. Flags override --config values; see docs/training.md.",
                       usage="normfree train [--recipe NAME] [--config YAML] [--resume CKPT] [OPTION ...]",
                       formatter_class=HelpFormatter)
    p.add_argument("--config", help="YAML file with TrainConfig keys")
    p.add_argument("--resume", help="checkpoint (.safetensors) to continue from exactly")
    add_flag(p, "--overwrite", help="if --out-dir already holds a run, move it aside to DIR.old-N and start "
                                    "anew (without this, training into a folder that holds a run is refused)")
    p.add_argument("--recipe", help="named recipe whose values the other flags override; 'list' prints them")
    docs = TrainConfig.field_help()
    for f in dataclasses.fields(TrainConfig):
        if f.name == "recipe":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        doc = docs.get(f.name, "")
        flags = ["--" + f.name.replace("_", "-")] + (["-b"] if f.name == "batch_size" else [])
        text = f"{doc} (default: {default})" if doc else f"(default: {default})"
        if str(f.type) == "bool":  # --amp / --no-amp; the older --amp false still works (deprecated)
            p.add_argument(*flags, dest=f.name, action=BoolValueAction, parse=_parse_bool, default=None,
                           help=text)
        else:
            p.add_argument(*flags, dest=f.name, type=_field_type(f), default=None,
                           metavar=f.name.split("_")[-1].upper(), help=text)
    p.set_defaults(func=_run)
