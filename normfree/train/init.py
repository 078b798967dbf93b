"""``TrainConfig.init``: GradInit or AutoInit before the first step, recorded in ``<out_dir>/init.json``.

Values: ``default`` (the model's own init), ``auto`` (the init the model's registered baseline names:
``gradinit_*`` → GradInit, ``autoinit_*`` → AutoInit, anything else → default), ``autoinit``, or
``gradinit`` with options ``gradinit:key=value,...`` (``iters``, ``eta``, ``grad_bound``, ``lr``,
``min_scale``, ``optimizer`` = sgd | adam, ``batch`` = images per GradInit batch, 128 by default so
that runs at different training batch sizes start from the same learned init).
"""
from __future__ import annotations

import ast
import json
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..checks import POSITIVE_INT, check_choice, check_number
from ..errors import ConfigError
from ..init import autoinit, gradinit
from ..init.gradinit import GRADINIT_DOMAINS, GRADINIT_OPTIMIZERS
from ..models.baselines import BASELINES
from .data import step_generator, to_input

if TYPE_CHECKING:
    from .trainer import Trainer

INIT_KINDS = ("default", "auto", "gradinit", "autoinit")
_GRADINIT_OPTIONS = ("iters", "eta", "grad_bound", "lr", "min_scale", "optimizer", "batch")


def parse_init(spec: str, model_name: str) -> tuple[str, dict[str, Any]]:
    """``"gradinit:iters=50"`` → ``("gradinit", {"iters": 50})``, with ``auto`` resolved for ``model_name``."""
    kind, _, opts = spec.partition(":")
    if kind not in INIT_KINDS:
        raise ConfigError(f"init must be one of {', '.join(INIT_KINDS)} (gradinit may take :key=value,...), "
                          f"got {spec!r}")
    if kind == "auto":
        baseline = BASELINES.get(model_name.split("_", 1)[0])
        kind = baseline.init if baseline else "default"
    options: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = (s.strip() for s in item.partition("="))
        if not eq or kind != "gradinit" or key not in _GRADINIT_OPTIONS:
            raise ConfigError(f"bad init option {item!r} in {spec!r}: only gradinit takes options, "
                              f"namely {', '.join(_GRADINIT_OPTIONS)}")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
        where = f"--init gradinit:{key}"
        if key in GRADINIT_DOMAINS:
            options[key] = check_number(where, options[key], GRADINIT_DOMAINS[key])
        elif key == "batch":
            options[key] = check_number(where, options[key], POSITIVE_INT)
        else:  # optimizer, the one option left in _GRADINIT_OPTIONS
            check_choice(where, options[key], GRADINIT_OPTIMIZERS)
    return kind, options


def initialize_model(trainer: Trainer) -> dict[str, Any] | None:
    """Apply ``trainer.cfg.init`` to ``trainer.model`` (a fresh run only) and write ``init.json``."""
    cfg = trainer.cfg
    kind, opts = parse_init(cfg.init, cfg.model)
    if kind == "default":
        return None
    if kind == "autoinit":
        report = autoinit(trainer.model)
        info: dict[str, Any] = {"method": "autoinit", "forward_passes": 0, "backward_passes": 0,
                                "scales": report.scales, "predicted_block_var": report.block_var}
    else:
        batch = opts.pop("batch", 128)  # parse_init checked and converted both
        optimizer = opts.pop("optimizer", "sgd")
        info = gradinit(trainer.model, _batches(trainer, batch), optimizer, logger=tqdm.write if
                        trainer.dist.main else lambda _s: None, **opts).to_dict()
        info.update(batch=batch, optimizer=optimizer, options=opts)
    if trainer.dist.main:
        (trainer.run_dir / "init.json").write_text(json.dumps(info, indent=1))
    return info


def _batches(trainer: Trainer, batch: int):
    """Normalized, un-augmented training batches drawn with the run's seed (the same on every rank)."""
    data, k = trainer.train_data, 0
    batch = min(batch, len(data))
    while True:
        idx = torch.randperm(len(data), generator=step_generator(trainer.cfg.seed, -2, k))[:batch]
        x, y = data.batch(idx, False, step_generator(trainer.cfg.seed, -2, k))
        yield (to_input(x.to(trainer.device), trainer.mean, trainer.std, trainer.channels_last),
               y.to(trainer.device))
        k += 1
