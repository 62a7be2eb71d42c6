"""Named YAML recipes: find, read (with ``base`` inheritance), merge, override. No torch.

Split from ``workflows.config`` (which validates the result into typed models and so
imports the model core, i.e. torch): the CLI lists recipes, resolves ``--modalities`` and
rejects an unknown recipe name or a malformed ``--set`` without paying for torch.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from modalities.errors import ConfigError

CONFIG_DIRS = [
    Path(__file__).resolve().parents[1] / "configs",
    Path(sys.prefix) / "share" / "clinfuse" / "configs",
]


def available_configs() -> list[str]:
    """Names of the shipped recipes."""
    return sorted({p.stem for d in CONFIG_DIRS if d.is_dir() for p in d.glob("*.yaml")})


def _find(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        return p
    for d in CONFIG_DIRS:
        if (d / f"{name_or_path}.yaml").is_file():
            return d / f"{name_or_path}.yaml"
    raise ConfigError(
        f"unknown config {name_or_path!r}; valid names: {', '.join(available_configs())} "
        "(or pass a path to a .yaml file)"
    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Deep merge; ``None`` over a section (a mapping) removes it."""
    out = dict(base)
    for k, v in over.items():
        if v is None and isinstance(out.get(k), dict):
            out.pop(k)
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def read_recipe(name_or_path: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = _find(name_or_path)
    if str(path) in seen:
        raise ConfigError(f"config {path} extends itself through 'base'")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    base = data.pop("base", None)
    data.setdefault("name", path.stem)
    return _merge(read_recipe(base, (*seen, str(path))), data) if base else data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML scalars/lists)."""
    data = _merge({}, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from None
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        if value is None and isinstance(node.get(leaf), dict):
            node.pop(leaf)  # null removes a section (e.g. a modality the manifest lacks)
        else:
            node[leaf] = value
    return data


def select_modalities(
    name_or_path: str, overrides: list[str] | None, modalities: list[str] | str | None
) -> list[str]:
    """``overrides`` plus ``cohort.modalities.X=null`` for each entry not in ``modalities``.

    ``modalities`` is a list or a comma-separated string (``ct,note``); None keeps all.
    Unknown names are an error listing the recipe's entries; an unknown recipe or a
    malformed override fails here too (cheaply: YAML only).
    """
    overrides = list(overrides or [])
    data = apply_overrides(read_recipe(name_or_path), overrides)  # unknown names fail here
    if modalities is None:
        return overrides
    wanted = [
        m.strip()
        for m in (modalities.split(",") if isinstance(modalities, str) else modalities)
        if m.strip()
    ]
    have = sorted((data.get("cohort") or {}).get("modalities") or {})
    unknown = sorted(set(wanted) - set(have))
    if not wanted or unknown:
        raise ConfigError(
            f"--modalities {','.join(wanted) or '(empty)'}: "
            + (f"{', '.join(unknown)} not in" if unknown else "name at least one of")
            + f" config {name_or_path!r}'s modalities ({', '.join(have)})"
        )
    return overrides + [f"cohort.modalities.{m}=null" for m in have if m not in wanted]
