"""Model registry: names → builders, behind :func:`create_model` and :func:`list_models`, and the
``NAME:key=value,...`` model-spec strings that the CLI and the comparison tools accept."""
from __future__ import annotations

import ast
import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .errors import ModelOptionError, ModelSpecError


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: a builder plus the arguments that define this name."""

    name: str
    builder: Callable[..., nn.Module]
    fixed: dict[str, Any] = field(default_factory=dict)      # define the name; cannot be overridden
    defaults: dict[str, Any] = field(default_factory=dict)   # overridable defaults
    family: str = ""
    description: str = ""
    unsupported: dict[str, str] = field(default_factory=dict)  # builder options this name rejects: why
    accepts: tuple[str, ...] = ()  # the builder's options; empty: its signature's parameters

    def options(self) -> list[str]:
        """Keyword arguments a user may pass to :func:`create_model` for this name."""
        params = self.accepts or tuple(inspect.signature(self.builder).parameters)
        return [p for p in params if p not in self.fixed and p not in self.unsupported]

    def build(self, **kwargs: Any) -> nn.Module:
        allowed = self.options()
        for alias, name in KWARG_ALIASES.items():
            if alias in kwargs and name in allowed:
                if name in kwargs:
                    raise ModelOptionError(f"{self.name}: {alias!r} is timm's name for {name!r}; pass one")
                kwargs[name] = kwargs.pop(alias)
        unknown = [k for k in kwargs if k not in allowed]
        if unknown:
            hints = {k: difflib.get_close_matches(k, allowed, n=1) for k in unknown}
            detail = ", ".join(f"{k!r}" + (f" (did you mean {h[0]!r}?)" if h else "")
                               for k, h in hints.items())
            fixed = [k for k in unknown if k in self.fixed]
            why = f"; {fixed} are fixed by the name {self.name!r}" if fixed else ""
            why += "".join(f"; {k}: {self.unsupported[k]}" for k in unknown if k in self.unsupported)
            raise ModelOptionError(f"{self.name}: unexpected keyword argument(s) {detail}{why}. "
                            f"Valid options: {', '.join(allowed)}")
        model = self.builder(**self.fixed, **{**self.defaults, **kwargs})
        model.model_name = self.name
        return model


_REGISTRY: dict[str, ModelEntry] = {}

KWARG_ALIASES = {"drop_path_rate": "stochdepth_rate"}
"""timm's keyword → normfree's, accepted by every builder that has normfree's."""

NAME_PREFIX_ALIASES = {"dm_nfnet_": "nfnet_"}
"""timm's model-name prefixes for the same architectures (``dm_nfnet_f0``: DeepMind's NFNet-F0)."""


def register_model(name: str, builder: Callable[..., nn.Module], *, fixed: dict[str, Any] | None = None,
                   defaults: dict[str, Any] | None = None, family: str = "", description: str = "",
                   unsupported: dict[str, str] | None = None,
                   options: Sequence[str] | None = None) -> ModelEntry:
    """Register ``name`` so that ``create_model(name, **kw)`` calls ``builder(**fixed, **defaults, **kw)``.

    ``unsupported`` maps builder options that make no sense for this name to the reason, which the
    ``ModelOptionError`` for such an option states. ``options`` lists the builder's keyword options
    when its signature does not (a builder taking ``**options``, as the families do).
    """
    if name in _REGISTRY:
        raise ModelSpecError(f"model {name!r} is already registered")
    entry = ModelEntry(name, builder, dict(fixed or {}), dict(defaults or {}), family, description,
                       dict(unsupported or {}), tuple(options or ()))
    _REGISTRY[name] = entry
    return entry


def get_entry(name: str) -> ModelEntry:
    """The registry entry for ``name``; unknown names raise :class:`ModelSpecError` with the closest
    matches."""
    if not isinstance(name, str):
        raise ModelSpecError(f"a model name is a string such as 'nf_resnet50', got {name!r}")
    for alias, prefix in NAME_PREFIX_ALIASES.items():
        if name.startswith(alias) and prefix + name[len(alias):] in _REGISTRY:
            name = prefix + name[len(alias):]
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ModelSpecError(f"unknown model {name!r}{hint} (normfree.list_models() lists all)") from None


def create_model(name: str, *, features_only: bool = False, out_indices: Sequence[int] | None = None,
                 **kwargs: Any) -> nn.Module:
    """Build a registered model, e.g. ``create_model("nf_resnet50", num_classes=10, drop_rate=0.2)``.

    Every built-in family takes ``device=`` and ``dtype=`` (PyTorch's factory kwargs; ``device="meta"``
    builds without allocating weights). timm's names are accepted too: ``drop_path_rate`` for
    ``stochdepth_rate``, ``dm_nfnet_f0`` for ``nfnet_f0``. ``features_only=True`` returns a backbone
    (:class:`~normfree.models.net.FeatureNet`: a list of feature maps at ``out_indices``, default
    all, and no classifier).

    Unknown names raise :class:`~normfree.errors.ModelSpecError` naming the closest matches (so do a
    ``device`` this machine cannot use and a ``dtype`` that is not a floating-point ``torch.dtype``); unknown
    keywords raise :class:`~normfree.errors.ModelOptionError` (a ``TypeError``) naming them and listing
    the valid options.
    """
    from .resources import check_model_size

    if out_indices is not None and not features_only:
        raise ModelOptionError("out_indices needs features_only=True")
    entry = get_entry(name)
    _check_factory_kwargs(name, kwargs)
    check_model_size(name, lambda: entry.build(**kwargs), kwargs)
    model = entry.build(**kwargs)
    if not features_only:
        return model
    if not hasattr(model, "as_features"):
        raise ModelSpecError(f"{name}: features_only needs a ResidualNetwork, got {type(model).__name__}")
    return model.as_features(out_indices)


def _check_factory_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """``device=`` / ``dtype=`` that PyTorch would reject deep inside a builder, rejected up front with
    the value and what is accepted (an unknown device string, an accelerator this machine lacks, a
    dtype given as a string or an integer dtype, which cannot hold trainable weights). PyTorch itself is
    asked, not :func:`~normfree.checks.require_device`: that checks the CLI's device words, while a factory
    kwarg may be anything PyTorch takes (a ``torch.device``, ``"meta"``, an index)."""
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    if device is not None:
        try:
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError, TypeError) as err:
            raise ModelSpecError(f"{name}: device={device!r} cannot hold tensors here ({err}); use 'cpu', "
                                 "'meta' or an available accelerator such as 'cuda'") from None
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ModelSpecError(f"{name}: dtype must be a floating-point torch.dtype such as torch.float32 or "
                             f"torch.bfloat16, got {dtype!r}")


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names in registration order, optionally filtered by a shell-style pattern
    (``"nf_resnet*"``); a pattern without wildcards matches as a substring."""
    if pattern is not None and not isinstance(pattern, str):
        raise ModelSpecError(f"list_models takes a name pattern such as 'nf_resnet*', got {pattern!r}")
    names = list(_REGISTRY)
    if pattern:
        pat = pattern if any(c in pattern for c in "*?[") else f"*{pattern}*"
        names = [n for n in names if fnmatch.fnmatchcase(n, pat)]
    return names


def literal_or_word(text: str) -> Any:
    """A Python literal (``1``, ``False``, ``{'a': 1}``), else the stripped text as a string (``silu``)."""
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return text.strip()


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"nf_resnet50:std_conv=False,width=1"`` → ``("nf_resnet50", {"std_conv": False, "width": 1})``.

    Values are Python literals; a bare word (``activation=silu``) stays a string.
    """
    name, _, opts = spec.partition(":")
    kwargs: dict[str, Any] = {}
    for item in filter(None, opts.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise ModelSpecError(f"bad model option {item!r} in {spec!r}; write NAME:key=value,key=value")
        kwargs[key.strip()] = literal_or_word(value)
    return name, kwargs
