"""One dataclass behind the CLI flags, the YAML file and the Python API."""
from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checks import FRACTION, NONNEGATIVE, NONNEGATIVE_INT, POSITIVE, POSITIVE_INT, Domain, check_choice, \
    check_device, check_fields
from ..errors import ConfigError
from ..safeio import atomic_write_text, one_line
from .optim import PARAM_GROUP_KINDS

LR_SCALE_FIELDS = ("skip_gain_lr_scale", "gain_lr_scale", "bias_lr_scale")
DIVERGENCE_MODES = ("stop", "warn", "off")
DOMAINS: dict[str, Domain] = {
    "num_classes": Domain(integer=True, low=2), "image_size": Domain(integer=True, low=8, high=4096),
    "train_subset": NONNEGATIVE_INT, "test_subset": NONNEGATIVE_INT, "epochs": POSITIVE_INT,
    "batch_size": POSITIVE_INT, "accum_steps": POSITIVE_INT, "lr": POSITIVE, "min_lr": NONNEGATIVE,
    "warmup_epochs": NONNEGATIVE, "momentum": FRACTION, "weight_decay": NONNEGATIVE,
    **dict.fromkeys(LR_SCALE_FIELDS, NONNEGATIVE), "label_smoothing": FRACTION, "agc_clip": NONNEGATIVE,
    "agc_eps": POSITIVE, "ema_decay": FRACTION, "mixup": NONNEGATIVE, "cutmix": NONNEGATIVE,
    "seed": Domain(integer=True, low=0, high=2**63 - 1), "eval_every": POSITIVE_INT, "log_every": POSITIVE_INT,
    "spp_every": NONNEGATIVE_INT, "eval_batch_size": POSITIVE_INT,
    "divergence_factor": Domain(low=1, low_open=True), "divergence_patience": POSITIVE_INT}
"""The allowed values of each numeric :class:`TrainConfig` field."""
OPTIONAL = ("num_classes", "image_size")
BOOL_FIELDS = ("nesterov", "augment", "amp", "channels_last", "compile", "grad_checkpointing", "tta_flip")


def option(name: str) -> str:
    """How messages name a field: its key and its command-line flag."""
    return f"{name} (--{name.replace('_', '-')})"


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
    # ---- differential privacy: DP-SGD, checked by normfree.train.dp (docs/privacy.md) ----
    dp: bool = False                # DP-SGD: Poisson sampling, per-example clipping, Gaussian noise (needs normfree[dp])
    epsilon: float = 0.0            # target ε at the end of training; the noise multiplier is calibrated to it
    delta: float = 1e-5             # δ of the (ε, δ) guarantee; keep it below 1 / (training examples)
    max_grad_norm: float = 1.0      # C: every example's gradient is clipped to this L2 norm
    noise_multiplier: float = 0.0   # σ (noise std σ·C per coordinate of the summed gradient); 0 = from --epsilon
    accountant: str = "rdp"         # rdp | prv: the Opacus accountant that converts (q, σ, steps) into ε
    augmult: int = 1                # augmentations per example, their gradients averaged before clipping
    dp_physical_batch: int = 64     # examples per forward/backward; batch_size is the expected logical batch
    dp_engine: str = "functorch"    # functorch (torch.func vmap) | opacus (Opacus hooks + normfree.privacy)

    divergence: str = "stop"        # stop | warn | off: a loss above divergence_factor × its start for a stretch
    divergence_factor: float = 4.0  # "far beyond": loss > factor × max(first loss, ln num_classes)
    divergence_patience: int = 50   # steps in a row above that level before stopping (or warning)
    init: str = "auto"              # default | auto (the baseline's: gradinit_*, autoinit_*) | autoinit | gradinit[:key=value,...]

    def __post_init__(self) -> None:
        """Check every field against its domain (:data:`DOMAINS`) and the fields against each other, so
        a typo in a flag, a YAML file or a recipe fails before any work with one line naming the field."""
        check_fields(self, DOMAINS, BOOL_FIELDS, option, OPTIONAL)
        for name in ("model", "data", "out_dir", "init"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{option(name)} = {getattr(self, name)!r}: must be a non-empty string")
        if not isinstance(self.model_kwargs, dict) or not all(isinstance(k, str) for k in self.model_kwargs):
            raise ConfigError(f"{option('model_kwargs')} = {self.model_kwargs!r}: must be a mapping of "
                              'option names to values, e.g. {"width": 0.5}')
        check_choice(option("param_groups"), self.param_groups, PARAM_GROUP_KINDS)
        check_choice(option("divergence"), self.divergence, DIVERGENCE_MODES)
        check_device(option("device"), self.device)
        from .init import parse_init  # here, not at the top: it imports the models

        parse_init(self.init, self.model)
        consistency = [
            (self.min_lr <= self.lr, f"{option('min_lr')} = {self.min_lr:g} is above {option('lr')} = "
                                     f"{self.lr:g}: the schedule decays from lr down to min_lr"),
            (self.warmup_epochs <= self.epochs, f"{option('warmup_epochs')} = {self.warmup_epochs:g} is longer "
                                                f"than {option('epochs')} = {self.epochs}"),
            (self.batch_size % self.accum_steps == 0, f"{option('batch_size')} = {self.batch_size} must be "
                                                      f"divisible by {option('accum_steps')} = {self.accum_steps}"),
            (not self.nesterov or self.momentum > 0, f"{option('nesterov')} needs {option('momentum')} > 0 "
                                                     f"(got {self.momentum:g}); pass --nesterov false"),
        ]
        bad = [msg for ok, msg in consistency if not ok]
        if bad:
            raise ConfigError("; ".join(bad))

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
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
            raise ConfigError(f"config file {path} is not valid YAML{at}: "
                              f"{getattr(err, 'problem', None) or one_line(err)}") from None
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

        atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
