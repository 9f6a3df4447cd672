"""Options, each declared once, and the configs that hold them.

An option is a field of a small *group* (a frozen dataclass made with `@group`): its flag, type, default, allowed
values, bounds, resume rule and help are that one declaration (`opt(...)`). A command's config is an `Options`
subclass that *holds* the groups it uses (composition): its CLI flags, YAML keys, Python keywords, `--help`, range
checks and saved `config.yaml` are all derived from those declarations; `hide` leaves out the options of a held group
that the command does not use, `defaults` gives a command its own default where it needs one, `allowed` its own part of
an option's choices (one `--format` option: csv or json for predict, onnx or torchscript for export).

Values come from defaults ← a built-in recipe (`--recipe NAME`, fewlabels/recipes/<command>/NAME.yaml) ← a `--config`
YAML file ← flags or keywords; every value is checked as it is read. A config never changes after it is made
(`cfg.replace(...)` makes a new one), and which options the user set is part of it: `cfg.given`.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from .errors import FewLabelsError

T = TypeVar("T")


_BOUNDS = {"ge": ("≥", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("≤", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def opt(default: Any, help: str, choices: tuple | None = None, *, ge: float | None = None, gt: float | None = None,
        le: float | None = None, lt: float | None = None, resume: str = "same", short: str | None = None,
        **kw: Any) -> Any:
    """An option: its default, help text, allowed values (choices), numeric bounds (ge/gt/le/lt, as pydantic's) and
    what a resumed run may do with it: "same" (must equal the run's own value), "change" (may differ: where the run
    lives, what it prints, where it runs) or "extend" (may differ, and keeps the run's value unless given again: how
    far a run goes). short: a one-letter flag besides the long one (e.g. "-v")."""
    assert resume in ("same", "change", "extend"), resume
    md: dict[str, Any] = {"help": help, "resume": resume}
    if short is not None:
        md["short"] = short
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
                rule = " and ".join(f"{_BOUNDS[k][0]} {_num(b)}" for k, b in bounds.items())
                raise FewLabelsError(f"config key '{name}' (--{name.replace('_', '-')}) must be {rule}, got {_num(v)}")


def _num(x: float) -> str:
    """A bound or value as a person reads it: 2147483647 and 100000 as such, 0.5 and 1e+20 compactly."""
    return str(int(x)) if isinstance(x, int) and abs(x) < 10**15 else f"{x:g}"


def _coerce(name: str, value: Any, tp: Any, choices: tuple | None, bounds: dict[str, float] | None = None) -> Any:
    base, optional = _base_type(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null") and optional):
        if optional:
            return None
        raise FewLabelsError(f"config key '{name}' cannot be empty")
    try:
        if isinstance(base, list):  # a number (int | float | None), or with str: a number or else a name/path
            if isinstance(value, str):
                try:
                    value = float(value) if any(ch in value for ch in ".eE") else int(value)
                except ValueError:
                    if str not in base:
                        raise
            if not isinstance(value, (int, float, str)) or isinstance(value, bool) or (
                    isinstance(value, str) and str not in base):
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
    bad = [v for v in (value if isinstance(value, list) else [value]) if isinstance(v, float) and not math.isfinite(v)]
    if bad:  # nan and ±inf parse as floats, and would train to chance (or overflow) without a word
        raise FewLabelsError(f"config key '{name}' (--{name.replace('_', '-')}) must be a finite number, got {bad[0]}")
    if choices is not None and value not in choices:
        raise FewLabelsError(f"config key '{name}': {value!r} is not one of {', '.join(map(str, choices))}")
    _check_bounds(name, value, bounds)
    return value


def _type_name(tp: Any) -> str:
    base, optional = _base_type(tp)
    if typing.get_origin(base) is list:
        name = f"list of {getattr(typing.get_args(base)[0], '__name__', 'values')} (comma-separated)"
    else:
        name = (("number or path" if str in base else "number") if isinstance(base, list)
                else getattr(base, "__name__", str(base)))
    return f"{name} (or none)" if optional else name


GROUPS: list[type] = []  # every option group, in the order they were declared


def group(cls: type[T]) -> type[T]:
    """Declare an option group: a frozen dataclass whose fields are options made with `opt()`."""
    out = dataclass(frozen=True)(cls)
    GROUPS.append(out)
    return out


@dataclass(frozen=True)
class Declared:
    """One option as a command offers it."""

    name: str
    group: type
    type: Any
    default: Any
    help: str
    choices: tuple | None
    bounds: dict[str, float] | None
    resume: str
    short: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def check(self, value: Any) -> Any:
        return _coerce(self.name, value, self.type, self.choices, self.bounds)


def declarations(g: type) -> list[Declared]:
    hints = typing.get_type_hints(g)
    out = []
    for f in fields(g):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        out.append(Declared(f.name, g, hints[f.name], default, f.metadata.get("help", ""), f.metadata.get("choices"),
                            f.metadata.get("bounds"), f.metadata.get("resume", "same"), f.metadata.get("short")))
    return out


class Options:
    """A config made of option groups. Subclasses set `groups` (and `hide`, `defaults`, `renamed`); an instance is
    built from keyword arguments (checked as flags are), reads its options by name (`cfg.lr`), hands out a group
    (`cfg.group(Optim)`), and is never changed: `replace` and `update` return a new config."""

    groups: ClassVar[tuple[type, ...]] = ()
    hide: ClassVar[tuple[str, ...]] = ()  # options of the held groups that this config does not offer
    defaults: ClassVar[dict[str, Any]] = {}  # this config's own defaults
    allowed: ClassVar[dict[str, tuple]] = {}  # this config's own choices, a part of the option's (e.g. --format)
    renamed: ClassVar[dict[str, str]] = {}  # old option name → new one, for a message
    options: ClassVar[dict[str, Declared]] = {}
    _owner: ClassVar[dict[str, type]] = {}
    __slots__ = ("_parts", "given", "recipe", "from_recipe")

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        opts: dict[str, Declared] = {}
        owner: dict[str, type] = {}
        for g in cls.groups:
            for d in declarations(g):
                if d.name in owner:
                    raise TypeError(f"{cls.__name__}: option '{d.name}' is declared by both "
                                    f"{owner[d.name].__name__} and {g.__name__}")
                owner[d.name] = g
                if d.name not in cls.hide:
                    opts[d.name] = dataclasses.replace(d, default=cls.defaults[d.name]) if d.name in cls.defaults else d
                if d.name in cls.allowed and d.name not in cls.hide:
                    d = opts[d.name]
                    if not set(cls.allowed[d.name]) <= set(d.choices or ()) or d.default not in cls.allowed[d.name]:
                        raise TypeError(f"{cls.__name__}: allowed[{d.name!r}] must be some of its choices and hold "
                                        f"its default")
                    opts[d.name] = dataclasses.replace(d, choices=tuple(cls.allowed[d.name]))
        stray = (set(cls.hide) | set(cls.defaults) | set(cls.allowed)) - set(owner)
        if stray:
            raise TypeError(f"{cls.__name__}: hide/defaults/allowed name options it does not hold: {sorted(stray)}")
        for d in opts.values():
            _check_bounds(d.name, d.default, d.bounds)
        cls.options, cls._owner = opts, owner

    def __init__(self, *, given: Iterable[str] | None = None, recipe: str | None = None,
                 from_recipe: Iterable[str] = (), **values: Any) -> None:
        cls = type(self)
        checked = {k: cls.option(k).check(v) for k, v in values.items()}
        parts = {}
        for g in cls.groups:
            kw = {}
            for f in fields(g):
                if f.name in checked:
                    kw[f.name] = checked[f.name]
                elif f.name in cls.defaults:
                    kw[f.name] = copy.copy(cls.defaults[f.name])
            parts[g] = g(**kw)
        self._set(parts, frozenset(values) if given is None else frozenset(given), recipe, frozenset(from_recipe))

    def _set(self, parts: dict[type, Any], given: frozenset, recipe: str | None, from_recipe: frozenset) -> None:
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "given", given)
        object.__setattr__(self, "recipe", recipe)
        object.__setattr__(self, "from_recipe", from_recipe)  # the given options whose value is the recipe's

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a {type(self).__name__} does not change: use .replace({name}=...)")

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_") and name in type(self).options:
            return getattr(self._parts[type(self)._owner[name]], name)
        raise AttributeError(f"{type(self).__name__} has no option '{name}'")

    def __contains__(self, name: str) -> bool:
        return name in type(self).options

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.asdict() == self.asdict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.asdict().items())})"

    @classmethod
    def option(cls, name: str) -> Declared:
        """The declaration of one of this config's options; an unknown, renamed or unused name is a clear error."""
        if name in cls.options:
            return cls.options[name]
        flag = "--" + name.replace("_", "-")
        if name in cls.renamed:
            new = cls.renamed[name]
            raise FewLabelsError(f"option '{name}' ({flag}) is now '{new}' (--{new.replace('_', '-')})")
        if name in cls._owner:
            raise FewLabelsError(f"option '{name}' ({flag}) is not used by {cls.__name__}; its options: "
                                 f"{', '.join(cls.options)}")
        close = difflib.get_close_matches(name, list(cls.options), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise FewLabelsError(f"unknown option '{name}'{hint}; valid: {', '.join(cls.options)}")

    def group(self, g: type[T]) -> T:
        """The instance of a group this config holds (its hidden options at their group defaults)."""
        return self._parts[g]

    def asdict(self) -> dict[str, Any]:
        return {k: getattr(self._parts[type(self)._owner[k]], k) for k in type(self).options}

    def replace(self, **changes: Any) -> Any:
        """A copy with some options changed by the program (`given` stays what the user set)."""
        return self._with(changes, self.given)

    def update(self, values: dict[str, Any]) -> Any:
        """A copy with options the user set (keywords on top of a config object)."""
        return self._with(values, self.given | frozenset(values), self.from_recipe - frozenset(values))

    def _with(self, changes: dict[str, Any], given: frozenset, from_recipe: frozenset | None = None) -> Any:
        cls = type(self)
        parts = dict(self._parts)
        for k, v in changes.items():
            g = cls._owner[cls.option(k).name]
            parts[g] = dataclasses.replace(parts[g], **{k: cls.options[k].check(v)})
        out = cls.__new__(cls)
        out._set(parts, given, self.recipe, self.from_recipe if from_recipe is None else from_recipe)
        return out

    @classmethod
    def of(cls, other: Options, **changes: Any) -> Any:
        """This config made of the groups of another that holds them (a command's TrainConfig), with `changes`."""
        out = cls.__new__(cls)
        out._set({g: other._parts.get(g) or g() for g in cls.groups}, other.given, other.recipe, other.from_recipe)
        return out.replace(**changes) if changes else out

    @classmethod
    def build(cls, cfg: Any = None, values: dict[str, Any] | None = None) -> Any:
        """The config of a call from Python: keyword arguments, a config object of this class, or both (the keywords
        override the object's options)."""
        if cfg is None:
            return cls(**(values or {}))
        if not isinstance(cfg, cls):
            raise FewLabelsError(f"expected keyword arguments or a {cls.__module__}.{cls.__name__}, got "
                                 f"{type(cfg).__name__} {cfg!r:.60}")
        return cfg.update(values) if values else cfg

    def set_by_user(self, names: Iterable[str], recipe: bool = True) -> list[str]:
        """Which of `names` the user set to something other than the default (a default written out, as in a saved
        config.yaml passed back with --config, changes nothing and is not counted). recipe=False leaves out the
        values a --recipe set and nothing else changed: a check that refuses an option some other option makes
        unused refuses what the user typed, not a recipe's setting that another flag switched off."""
        return [n for n in names if n in self.given and getattr(self, n) != type(self).options[n].default
                and (recipe or n not in self.from_recipe)]


def checked(cfg: T) -> T:
    """A config given to a library function: an Options object (checked when it was made)."""
    if not isinstance(cfg, Options):
        raise FewLabelsError(f"expected a config object, got {type(cfg).__name__} {cfg!r:.60}")
    return cfg


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

class _UniqueKeys(yaml.SafeLoader):
    """safe_load that refuses a key given twice (YAML itself would keep the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise FewLabelsError(f"'{key}' is given twice (lines {seen[key]} and {line}): keep one")
            seen[key] = line
        return super().construct_mapping(node, deep)


def _read_yaml(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise FewLabelsError(f"config file {p} does not exist")
    try:
        data = yaml.load(p.read_bytes().decode("utf-8-sig"), Loader=_UniqueKeys) or {}  # noqa: S506 - safe loader
    except UnicodeDecodeError as e:
        raise FewLabelsError(f"config file {p} is not UTF-8 text (byte {e.start}): save it as UTF-8") from None
    except FewLabelsError as e:
        raise FewLabelsError(f"config file {p}: {e}") from None
    except yaml.YAMLError as e:
        raise FewLabelsError(f"config file {p} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise FewLabelsError(f"config file {p} must be a mapping of option: value")
    return data


def resolve(cls: type[T], yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
            recipe_options: dict[str, Any] | None = None, recipe_name: str | None = None) -> T:
    """Parse a config: defaults ← a recipe ← a YAML file ← overrides (the flags that were given). The options set
    by any of those are the config's `given`. A YAML key the command holds but does not use is ignored when it has
    its default (a saved config.yaml of an older version lists every option), else refused."""
    values: dict[str, Any] = {}
    sources: list[tuple[str, dict, bool]] = []  # (where, its keys, whether it is the recipe)
    from_recipe: set[str] = set()
    if recipe_options:
        sources.append((f"recipe {recipe_name}", recipe_options, True))
    if yaml_path:
        sources.append((str(yaml_path), _read_yaml(Path(yaml_path)), False))
    for where, data, is_recipe in sources:
        for k, v in data.items():
            key = str(k).replace("-", "_")
            if key not in cls.options and key in cls._owner and key not in cls.renamed:
                d = next(d for d in declarations(cls._owner[key]) if d.name == key)
                if d.check(v) == d.default:
                    continue
            if key not in cls.options:
                if key in cls.renamed or key in cls._owner:
                    try:
                        cls.option(key)
                    except FewLabelsError as e:
                        raise FewLabelsError(f"config key '{k}' in {where}: {e}") from None
                close = difflib.get_close_matches(key, list(cls.options), n=3)
                hint = f" (did you mean {', '.join(close)}?)" if close else ""
                raise FewLabelsError(f"unknown config key '{k}' in {where}{hint}; valid keys: {', '.join(cls.options)}")
            values[key] = v
            if is_recipe:
                from_recipe.add(key)
            else:
                from_recipe.discard(key)
    for k, v in (overrides or {}).items():
        cls.option(k)
        values[k] = v
        from_recipe.discard(k)
    return cls(recipe=recipe_name if recipe_options else None, from_recipe=from_recipe, **values)


def add_arguments(parser: argparse.ArgumentParser, cls: type[Options]) -> None:
    """One `--flag` per option; flags default to None so that only the ones given override the YAML file. An option
    that was renamed keeps its old flag, which says the new name."""
    for d in cls.options.values():
        base, _ = _base_type(d.type)
        shown = "" if "default" in d.help or d.default is None else f" (default: {_show(d.default)})"
        help_ = f"{d.help}{shown}"
        if base is bool:
            # --flag, --flag true/false, or --no-flag
            parser.add_argument(d.flag, dest=d.name, nargs="?", const=True, default=None, metavar="BOOL",
                                help=help_ if d.short is None else f"{help_} (also {d.short})")
            if d.short is not None:  # takes no value: `-v RUN` must not read RUN as the flag's value
                parser.add_argument(d.short, dest=d.name, action="store_const", const=True, help=argparse.SUPPRESS)
            parser.add_argument("--no-" + d.flag[2:], dest=d.name, action="store_const", const=False,
                                help=argparse.SUPPRESS)
        else:
            parser.add_argument(d.flag, dest=d.name, default=None, choices=d.choices, help=help_,
                                metavar=d.name.upper() if d.choices is None else None)
    for old in cls.renamed:
        parser.add_argument("--" + old.replace("_", "-"), dest=f"_renamed_{old}", default=None, help=argparse.SUPPRESS)


def _show(v: Any) -> str:
    return ",".join(map(str, v)) if isinstance(v, list) else str(v)


def from_args(cls: type[T], ns: argparse.Namespace, command: str | None = None) -> T:
    for old in cls.renamed:
        if getattr(ns, f"_renamed_{old}", None) is not None:
            cls.option(old)  # the message naming the new option
    overrides = {k: getattr(ns, k) for k in cls.options if getattr(ns, k, None) is not None}
    name = getattr(ns, "recipe", None)
    rec = recipe(command, name) if name and command else None
    return resolve(cls, getattr(ns, "config", None), overrides, rec, name)


def to_yaml(cfg: Options) -> str:
    return yaml.safe_dump(cfg.asdict(), sort_keys=False)
