"""Typed configuration: defaults, then a YAML file, then command-line flags.

Each command's options are a dataclass; the field's `help` metadata becomes `--help`. A YAML file holds the same
keys (flat, with `-` or `_`), and an unknown key or a value of the wrong type is an error that names it. A built-in
recipe (`--recipe NAME`, files under fewlabels/recipes/<command>/) is such a file that ships with the package and
comes first: defaults ← recipe ← `--config` file ← flags. The resolved config is saved as `config.yaml` in the run
folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

from .errors import FewLabelsError

T = TypeVar("T")


_BOUNDS = {"ge": ("≥", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("≤", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def opt(default: Any, help: str, choices: tuple | None = None, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, **kw: Any) -> Any:
    """A config field with its help text, allowed values (choices) and numeric bounds (ge/gt/le/lt, as pydantic's)."""
    md: dict[str, Any] = {"help": help}
    if choices is not None:
        md["choices"] = choices
    bounds = {k: b for k, b in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if b is not None}
    if bounds:
        md["bounds"] = bounds
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=md, **kw)
    return dataclasses.field(default=default, metadata=md, **kw)


def _base_type(tp: Any) -> tuple[Any, bool]:
    """(underlying type, optional?) for annotations like `int | None`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return (args[0] if len(args) == 1 else args), True
    return tp, False


def _check_bounds(name: str, value: Any, bounds: dict[str, float] | None) -> None:
    if not bounds or value is None:
        return
    for v in value if isinstance(value, list) else [value]:
        for kind, bound in bounds.items():
            if isinstance(v, (int, float)) and not _BOUNDS[kind][1](v, bound):
                rule = " and ".join(f"{_BOUNDS[k][0]} {b:g}" for k, b in bounds.items())
                raise FewLabelsError(f"config key '{name}' (--{name.replace('_', '-')}) must be {rule}, got {v:g}")


def _coerce(name: str, value: Any, tp: Any, choices: tuple | None, bounds: dict[str, float] | None = None) -> Any:
    base, optional = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise FewLabelsError(f"config key '{name}' cannot be empty")
    try:
        if isinstance(base, list):  # e.g. int | float | None
            if isinstance(value, str):
                value = float(value) if any(ch in value for ch in ".eE") else int(value)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ValueError
        elif base is bool:
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            elif not isinstance(value, bool):
                raise ValueError
        elif base is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            value = int(value)
        elif base is float:
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
        elif base is str:
            value = str(value)
        elif typing.get_origin(base) is list:
            (item,) = typing.get_args(base)
            if isinstance(value, str):
                value = [v for v in value.split(",") if v]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]  # YAML `std: 0.25`, as the flag --std 0.25
            value = [item(v) for v in value]
    except (ValueError, TypeError):
        raise FewLabelsError(f"config key '{name}': {value!r} is not a valid {_type_name(tp)}") from None
    if choices is not None and value not in choices:
        raise FewLabelsError(f"config key '{name}': {value!r} is not one of {', '.join(map(str, choices))}")
    _check_bounds(name, value, bounds)
    return value


def _type_name(tp: Any) -> str:
    base, optional = _base_type(tp)
    if typing.get_origin(base) is list:
        name = f"list of {getattr(typing.get_args(base)[0], '__name__', 'values')} (comma-separated)"
    else:
        name = "number" if isinstance(base, list) else getattr(base, "__name__", str(base))
    return f"{name} (or none)" if optional else name


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


RECIPES = Path(__file__).resolve().parent / "recipes"


def _recipe_dir(command: str) -> Path:
    return RECIPES / command.replace(" ", "_")  # a two-word command such as "augment preview": augment_preview/


def recipes(command: str) -> list[str]:
    """The built-in recipes of a command (`fewlabels/recipes/<command>/<name>.yaml`): measured option sets."""
    folder = _recipe_dir(command)
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def recipe(command: str, name: str, **overrides: Any) -> dict[str, Any]:
    """A built-in recipe's options as keyword arguments, with `overrides` on top, e.g.
    ``fewlabels.selftrain(**fewlabels.recipe("selftrain", "cifar-cpu", student_epochs=30), data="path/to/images",
    labels_per_class=400)``. Each file says what it was measured on."""
    known = recipes(command)
    if name not in known:
        have = f"its recipes: {', '.join(known)}" if known else "it has no built-in recipes"
        raise FewLabelsError(f"no recipe '{name}' for `fewlabels {command}`; {have}")
    data = _read_yaml(_recipe_dir(command) / f"{name}.yaml")
    return {**{k.replace("-", "_"): v for k, v in data.items()}, **overrides}


def _read_yaml(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise FewLabelsError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise FewLabelsError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise FewLabelsError(f"config file {p} must be a mapping of option: value")
    return data


def resolve(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
            recipe_options: dict[str, Any] | None = None, recipe_name: str | None = None) -> T:
    """Build a config: dataclass defaults ← a recipe ← YAML file ← overrides (flags that were set)."""
    hints = _hints(cls)
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    sources = []
    if recipe_options:
        sources.append((f"recipe {recipe_name}", recipe_options))
    if yaml_path:
        sources.append((str(yaml_path), _read_yaml(Path(yaml_path))))
    for where, data in sources:
        for k, v in data.items():
            key = str(k).replace("-", "_")
            if key not in known:
                close = [n for n in known if n.startswith(key[:3])]
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise FewLabelsError(f"unknown config key '{k}' in {where}{hint}; valid keys: {', '.join(known)}")
            values[key] = v
    for k, v in (overrides or {}).items():
        if k not in known:
            close = difflib.get_close_matches(k, list(known), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise FewLabelsError(f"unknown option '{k}'{hint}; valid: {', '.join(known)}")
        values[k] = v
    out = {}
    for k, v in values.items():
        out[k] = _coerce(k, v, hints[k], known[k].metadata.get("choices"), known[k].metadata.get("bounds"))
    cfg = cls(**out)
    object.__setattr__(cfg, "_explicit", frozenset(values))  # what the user set (YAML or flags), for resuming
    if recipe_options:
        object.__setattr__(cfg, "_recipe", recipe_name)  # written into the run folder's config.yaml
    return cfg


def checked(cfg: T) -> T:
    """`cfg` with every field checked and converted as a flag's value would be (a config built in Python, e.g.
    ``TrainConfig(epochs="5")`` or ``TrainConfig(lr=-1)``, gets the same clear error as the command line)."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise FewLabelsError(f"expected a config object, got {type(cfg).__name__} {cfg!r:.60}")
    hints = _hints(type(cfg))
    changes = {}
    for f in fields(cfg):
        v = getattr(cfg, f.name)
        new = _coerce(f.name, v, hints[f.name], f.metadata.get("choices"), f.metadata.get("bounds"))
        if type(new) is not type(v) or new != v:
            changes[f.name] = new
    return dataclasses.replace(cfg, **changes) if changes else cfg


def add_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per field; flags default to None so that only the ones given override YAML."""
    hints = _hints(cls)
    for f in fields(cls):
        base, _ = _base_type(hints[f.name])
        default = f.default if f.default is not MISSING else (f.default_factory() if f.default_factory is not MISSING
                                                              else None)
        help_ = f"{f.metadata.get('help', '')} (default: {default})"
        flag = "--" + f.name.replace("_", "-")
        if base is bool:
            # --flag, --flag true/false, or --no-flag
            parser.add_argument(flag, dest=f.name, nargs="?", const=True, default=None, metavar="BOOL", help=help_)
            parser.add_argument("--no-" + f.name.replace("_", "-"), dest=f.name, action="store_const", const=False,
                                help=argparse.SUPPRESS)
        else:
            parser.add_argument(flag, dest=f.name, default=None, choices=f.metadata.get("choices"), help=help_,
                                metavar=f.name.upper() if "choices" not in f.metadata else None)


def from_args(cls: type[T], ns: argparse.Namespace, command: str | None = None) -> T:
    overrides = {f.name: getattr(ns, f.name) for f in fields(cls) if getattr(ns, f.name, None) is not None}
    name = getattr(ns, "recipe", None)
    rec = recipe(command, name) if name and command else None
    return resolve(cls, getattr(ns, "config", None), overrides, rec, name)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def pick(cfg: Any, cls: type[T], **extra: Any) -> T:
    """The part of a command's config that a library function takes (e.g. its TrainConfig)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in dataclasses.asdict(cfg).items() if k in names}, **extra)


def command_config(cls: type[T], cfg: Any = None, overrides: dict[str, Any] | None = None) -> T:
    """The config of a command called from Python: keyword arguments, a config object of the command's class, or
    both (the keywords override the object's fields); every value checked as a flag's would be."""
    if cfg is None:
        return resolve(cls, overrides=overrides)
    if not isinstance(cfg, cls):
        raise FewLabelsError(f"expected keyword arguments or a {cls.__module__}.{cls.__name__}, got "
                             f"{type(cfg).__name__} {cfg!r:.60}")
    if not overrides and hasattr(cfg, "_explicit"):
        return cfg  # resolved already (the command line)
    out = resolve(cls, overrides={**dataclasses.asdict(cfg), **(overrides or {})})
    if hasattr(cfg, "_explicit"):
        object.__setattr__(out, "_explicit", cfg._explicit | frozenset(overrides or {}))
    if hasattr(cfg, "_recipe"):
        object.__setattr__(out, "_recipe", cfg._recipe)
    return out
