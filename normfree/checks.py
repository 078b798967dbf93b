"""Domain checks for numeric options, shared by every place a value enters (config, CLI, API).

Each check raises the project error given (``ConfigError`` by default) with one line naming the
option, the value and what is allowed, e.g. ``--eval-every = 0: must be an integer >= 1``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Container, Iterable, Mapping

from .errors import ConfigError, NormfreeError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class Domain:
    """Allowed values of a number: integer or real, with optional (open or closed) bounds."""

    integer: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        kind = "an integer" if self.integer else "a finite number"
        return f"{kind} {' and '.join(parts)}".strip()

    def contains(self, v: float) -> bool:
        return not ((self.low is not None and (v <= self.low if self.low_open else v < self.low))
                    or (self.high is not None and (v >= self.high if self.high_open else v > self.high)))


POSITIVE_INT = Domain(integer=True, low=1)
NONNEGATIVE_INT = Domain(integer=True, low=0)
NONNEGATIVE = Domain(low=0)
POSITIVE = Domain(low=0, low_open=True)
FRACTION = Domain(low=0, high=1, high_open=True)  # [0, 1)


def check_number(option: str, value: Any, domain: Domain, error: type[NormfreeError] = ConfigError,
                 why: str = "") -> Any:
    """``value`` as an int or float inside ``domain``; numeric strings (YAML reads ``1e-3`` as text) and
    integral floats for integer options are accepted and converted. ``why`` is added to the message."""
    v = value
    if isinstance(v, str):
        try:
            v = float(v) if not domain.integer else int(v) if v.strip().lstrip("+-").isdigit() else float(v)
        except ValueError:
            v = None
    ok_type = isinstance(v, (int, float)) and not isinstance(v, bool)
    if ok_type and domain.integer and isinstance(v, float):
        ok_type = math.isfinite(v) and v.is_integer()
        v = int(v) if ok_type else v
    if not ok_type or (isinstance(v, float) and not math.isfinite(v)) or not domain.contains(v):
        raise error(f"{option} = {value!r}: must be {domain.describe()}" + (f" ({why})" if why else ""))
    return int(v) if domain.integer else float(v)


def check_fields(obj: Any, domains: Mapping[str, Domain], flags: Iterable[str], option: Callable[[str], str],
                 optional: Container[str] = ()) -> None:
    """Check a config dataclass's numbers against ``domains`` (storing them converted, also on a frozen
    dataclass) and its ``flags`` are bools; ``option(name)`` is how a message names the field, and a
    field in ``optional`` may be None."""
    for name, domain in domains.items():
        value = getattr(obj, name)
        if not (value is None and name in optional):
            object.__setattr__(obj, name, check_number(option(name), value, domain))
    for name in flags:
        if not isinstance(getattr(obj, name), bool):
            raise ConfigError(f"{option(name)} = {getattr(obj, name)!r}: must be true or false")


def check_choice(option: str, value: Any, choices: tuple[str, ...], error: type[NormfreeError] = ConfigError) -> str:
    if value not in choices:
        raise error(f"{option} = {value!r}: must be one of {', '.join(choices)}")
    return value


def check_device(option: str, spec: Any, error: type[NormfreeError] = ConfigError) -> str:
    """A device spec ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (syntax only; see :func:`require_device`)."""
    if not isinstance(spec, str) or not DEVICE_PATTERN.fullmatch(spec):
        raise error(f"{option} = {spec!r}: must be auto, cpu, cuda, cuda:N or mps")
    return spec


def require_device(option: str, spec: str) -> str:
    """:func:`check_device` plus: the device exists on this machine (CUDA present, index in range)."""
    import torch

    check_device(option, spec)
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{option} = {spec!r}: CUDA is not available on this machine; use cpu")
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{option} = {spec!r}: this machine has {torch.cuda.device_count()} CUDA "
                              f"device(s) (cuda:0 … cuda:{torch.cuda.device_count() - 1})")
    return spec


def check_out_dir(option: str, path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` (and its parents), or fail with one line saying why not."""
    path = Path(path)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{option} {path}: {blocker} is a file, not a folder; choose another {option}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{option} {path}: cannot create the folder ({err.strerror or err})") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{option} {path}: the folder is not writable; choose another {option}")
    return path


def check_out_file(option: str, path: str | os.PathLike) -> Path:
    """An output file path whose folder exists (or can be created) and that is not itself a folder."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a folder; give a file name")
    check_out_dir(option, path.parent)
    return path
