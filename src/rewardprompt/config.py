"""Config files: YAML (with ``include``) to the stages' and the recipe's dataclasses.

One setting has one name everywhere: ``sft: {lr: 1e-3}`` in a file, ``--sft.lr`` on the command
line (``cli.py``), ``RecipeConfig(sft=SFTConfig(lr=...))`` in Python. ``load_config`` gives the
same config a command would start from, for use from Python.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

#: Recipe fields keyed by dimension: they follow ``data`` and are not inherited past it.
DIMENSION_MAPS = ("test_data", "scorers")
#: The shipped recipe files (``configs/`` at the top of a checkout links here).
PRESET_DIR = Path(__file__).resolve().parent / "configs"


class _Loader:
    """PyYAML's safe loader with YAML 1.2 floats: ``lr: 1e-3`` is a number, not a string."""

    _cls = None

    @classmethod
    def get(cls) -> type:
        import re

        import yaml

        if cls._cls is None:
            loader = type("RewardpromptLoader", (yaml.SafeLoader,), {})
            loader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
                r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+"
                r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
                list("-+0123456789."))
            cls._cls = loader
        return cls._cls


def _type_error(value: Any, hint: Any) -> str | None:
    """Why a YAML value does not fit a field's type (None when it does, or cannot be told)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if value is None:
        return None if type(None) in typing.get_args(hint) else "must not be empty"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0] if len(args) == 1 else None
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        ok = (isinstance(value, bool) if hint is bool else not isinstance(value, bool)
              and isinstance(value, (int, float) if hint is float else hint))
        return None if ok else f"expected {simple[hint]}, got {value!r}"
    origin = typing.get_origin(hint) or hint
    if origin in (list, dict) and not isinstance(value, origin):
        return f"expected a {'list' if origin is list else 'mapping'}, got {value!r}"
    return None


def from_dict(cls: type, data: dict, where: str = "", base: Any = None) -> Any:
    """A dataclass from a (YAML) dict, nested dataclasses included, over ``base`` (a nested
    field starts from its own default); unknown keys are errors."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key(s) for {cls.__name__}: "
                         f"{', '.join(where + k for k in unknown)}; choose from {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        sub = hints.get(name)
        unset = value is getattr(sys.modules.get("tyro"), "MISSING", object())  # required, not given
        error = None if dataclasses.is_dataclass(sub) or unset else _type_error(value, sub)
        if error:
            raise ValueError(f"config key {where}{name}: {error}")
        if dataclasses.is_dataclass(sub) and isinstance(value, dict):
            f = fields[name]
            start = getattr(base, name) if base is not None else (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            value = from_dict(sub, value, f"{where}{name}.", start)
        kwargs[name] = value
    return dataclasses.replace(base, **kwargs) if base is not None else cls(**kwargs)


def merge(cls: type, base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: nested configs (the stages', the template) merge key by
    key; other values (lists, and dicts such as ``data``) are replaced whole. A file that sets
    ``data`` starts its dimension-keyed maps (``test_data``, ``scorers``) afresh."""
    hints = typing.get_type_hints(cls)
    out = dict(base)
    if "data" in over:
        for key in DIMENSION_MAPS:
            out.pop(key, None)
    for key, value in over.items():
        sub = hints.get(key)
        if dataclasses.is_dataclass(sub) and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(sub, out[key], value)
        else:
            out[key] = value
    return out


def read_config(cls: type, source: str, _seen: tuple[str, ...] = ()) -> dict:
    """A YAML config (a preset name or a path) as a dict, its ``include`` chain resolved."""
    import yaml

    is_preset = "/" not in source and not source.endswith((".yaml", ".yml"))
    path = PRESET_DIR / f"{source}.yaml" if is_preset else Path(source)
    if not path.is_file():
        presets = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ValueError(f"unknown preset {source!r}; choose from {presets}" if is_preset
                         else f"no config file {path}")
    if str(path.resolve()) in _seen:
        raise ValueError(f"{path}: include loops back to itself")
    try:
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader.get()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    include = loaded.pop("include", None)
    if include is None:
        return loaded
    if not isinstance(include, str):
        raise ValueError(f"{path}: include must name one preset or file")
    parent = include if "/" not in include and not include.endswith((".yaml", ".yml")) \
        else str((path.parent / include))
    base = read_config(cls, parent, _seen + (str(path.resolve()),))
    base.pop("out", None)  # a run's directory is its own, never inherited
    return merge(cls, base, loaded)


def load_config(cls: type, source: str | None = None, **overrides: Any) -> Any:
    """The config a command starts from: a preset name or YAML path (``include`` resolved),
    then ``overrides`` (nested ones as dicts: ``sft={"lr": 1e-3}``)."""
    data = read_config(cls, source) if source else {}
    return from_dict(cls, merge(cls, data, overrides))
