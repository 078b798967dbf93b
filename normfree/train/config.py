"""One dataclass behind the CLI flags, the YAML file and the Python API."""
from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .optim import PARAM_GROUP_KINDS

LR_SCALE_FIELDS = ("skip_gain_lr_scale", "gain_lr_scale", "bias_lr_scale")


@dataclass
class TrainConfig:
    """Everything a run needs. Defaults: a CIFAR-scale SGD-Nesterov recipe (nf_architecture.md §4.2)."""

    model: str = "nf_cifar_resnet20"
    data: str = "demo"            # demo | synthetic | cifar10:DIR | cifar100:DIR | npz:DIR | imagefolder:DIR
    out_dir: str = "runs/train"
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # forwarded to create_model
    num_classes: int | None = None  # None: taken from the data; if given, must match the data
    image_size: int | None = None   # ImageFolder crop size (default: the model's input_size)
    train_subset: int = 0           # use only the first N training examples (0 = all)
    test_subset: int = 0
    epochs: int = 10
    batch_size: int = 128           # global batch per optimizer step (all ranks, all accumulation steps)
    accum_steps: int = 1
    lr: float = 0.1                 # peak learning rate (no automatic batch-size scaling)
    min_lr: float = 0.0
    warmup_epochs: float = 1.0
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4      # not applied to gains, biases, skip gains or other ≤1-D parameters
    param_groups: str = "default"   # default | fixup | revisited_bn | auto (the model's baseline's groups)
    skip_gain_lr_scale: float = 1.0  # lr multiplier for residual-branch skip gains (parameters named skip_gain)
    gain_lr_scale: float = 1.0      # lr multiplier for other gains (Scaled-WS conv gains, SE gains, norm weights)
    bias_lr_scale: float = 1.0      # lr multiplier for biases (conv, linear and norm biases)
    label_smoothing: float = 0.0
    agc_clip: float = 0.0           # 0 = off; 0.01 is the NFNet value at batch 4096
    agc_eps: float = 1e-3
    ema_decay: float = 0.0          # 0 = off; official warm-up min(decay, (1+t)/(10+t))
    augment: bool = True            # pad-crop + flip (small images) / random-resized-crop + flip (folders)
    mixup: float = 0.0              # Beta(a, a) parameter; 0 = off
    cutmix: float = 0.0             # Beta(a, a) parameter; 0 = off (with mixup too: half the steps each)
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda | cuda:N
    amp: bool = True                # bf16 autocast on GPU (never on CPU)
    channels_last: bool = True      # on GPU only
    compile: bool = False
    grad_checkpointing: bool = False  # recompute each block in backward: less memory, one more forward
    eval_every: int = 1             # epochs
    log_every: int = 20             # steps
    spp_every: int = 0              # steps; 0 = off. Signal propagation of one fixed batch -> <out_dir>/spp/
    eval_batch_size: int = 256
    tta_flip: bool = False          # also score the mean logits of each test image and its mirror (test_top1_flip)
    recipe: str = ""                # the named recipe these values started from (recorded, see normfree recipes)
    init: str = "auto"              # default | auto (the baseline's: gradinit_*, autoinit_*) | autoinit | gradinit[:key=value,...]

    def __post_init__(self) -> None:
        checks = [(self.epochs >= 1, "epochs must be >= 1"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.accum_steps >= 1, "accum_steps must be >= 1"), (self.lr > 0, "lr must be > 0"),
                  (self.batch_size % self.accum_steps == 0, "batch_size must be divisible by accum_steps"),
                  (0 <= self.label_smoothing < 1, "label_smoothing must be in [0, 1)"),
                  (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
                  (self.agc_clip >= 0, "agc_clip must be >= 0"), (self.warmup_epochs >= 0, "warmup_epochs >= 0"),
                  *[(getattr(self, f) >= 0, f"{f} must be >= 0") for f in LR_SCALE_FIELDS],
                  (self.param_groups in PARAM_GROUP_KINDS,
                   f"param_groups must be one of {', '.join(PARAM_GROUP_KINDS)}")]
        bad = [msg for ok, msg in checks if not ok]
        if bad:
            raise ConfigError("invalid training config: " + "; ".join(bad))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown config key(s) {unknown}; valid keys: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> "TrainConfig":
        """Load a YAML mapping; ``overrides`` (e.g. from command-line flags) win over the file."""
        return cls.from_dict({**cls.read_yaml(path), **overrides})

    @staticmethod
    def read_yaml(path: str | Path) -> dict[str, Any]:
        """The mapping in a YAML config file (not yet checked against the fields)."""
        import yaml

        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
        return values

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """Each field's trailing ``# comment`` in the class source, so one place documents the field
        for readers of the code and for ``normfree train --help``."""
        pattern = re.compile(r"^\s+(\w+):[^#\n]*#\s*(.+)$", re.M)
        return {m.group(1): m.group(2).strip() for m in pattern.finditer(inspect.getsource(cls))}

    def save_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
