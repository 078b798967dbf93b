"""Named training recipes: YAML files of :class:`TrainConfig` values shipped in ``normfree/recipes``.

A recipe fixes every lever of a result (model and its options, optimizer, schedule, regularization,
evaluation), so a run is reproduced by naming a recipe and a seed. Values are layered
``TrainConfig`` defaults < recipe < ``--config`` file < command-line flags; ``model_kwargs`` are merged
key by key, so ``--model-kwargs '{"alpha": 0.3}'`` keeps the recipe's other model options.
"""
from __future__ import annotations

import dataclasses
from importlib import resources
from typing import Any

import yaml

from ..errors import ConfigError

_PACKAGE = "normfree.recipes"


def _files() -> dict[str, Any]:
    return {f.name[:-5]: f for f in resources.files(_PACKAGE).iterdir() if f.name.endswith(".yaml")}


def list_recipes() -> list[str]:
    """Names of the shipped recipes, sorted."""
    return sorted(_files())


def recipe_description(name: str) -> str:
    return str(_read(name).get("description", "")).strip()


def _read(name: str) -> dict[str, Any]:
    files = _files()
    if name not in files:
        raise ConfigError(f"unknown recipe {name!r}; known recipes: {', '.join(sorted(files))} "
                        "(normfree recipes prints their values)")
    return yaml.safe_load(files[name].read_text()) or {}


def load_recipe(name: str) -> dict[str, Any]:
    """The :class:`TrainConfig` values of recipe ``name`` (with ``recipe`` set to the name)."""
    from .config import TrainConfig

    values = dict(_read(name).get("values") or {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:  # a shipped file out of step with TrainConfig: a bug, caught by the tests
        raise KeyError(f"recipe {name} has unknown keys {unknown}")
    return {**values, "recipe": name}


def layer_values(*layers: dict[str, Any]) -> dict[str, Any]:
    """Later layers win; ``model_kwargs`` dicts are merged instead of replaced."""
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if key == "model_kwargs" and isinstance(out.get(key), dict) and isinstance(value, dict):
                value = {**out[key], **value}
            out[key] = value
    return out


def format_recipes() -> str:
    """Every recipe with its description and values, as ``normfree recipes`` prints them."""
    blocks = []
    for name in list_recipes():
        values = load_recipe(name)
        values.pop("recipe")
        lines = [f"{name}: {recipe_description(name)}"]
        lines += [f"    {k}: {v}" for k, v in values.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
