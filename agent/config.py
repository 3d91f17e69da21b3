"""Configs are typed dataclasses: defaults, then a YAML file, then command-line flags.

Each field carries its help text in ``metadata["help"]``. Values from YAML and from
flags are checked against the field's type (``lr: 3e-4`` into a ``bool`` field is
refused), nested dataclasses are addressed as ``section.field`` on the command line
(``--bc.head deterministic``), and :func:`to_dict` gives the resolved config to save.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import re
import types
import typing
from pathlib import Path
from typing import Any, Callable, Literal, get_args, get_origin

import yaml


T = typing.TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field accepts: ``min``/``max`` are closed bounds, ``gt``/``lt`` open ones."""

    min: float | None = None
    max: float | None = None
    gt: float | None = None
    lt: float | None = None

    def __contains__(self, value) -> bool:
        if not isinstance(value, numbers.Integral) and not math.isfinite(value):
            return False  # NaN compares false with every bound; infinity is never a setting
        return ((self.min is None or value >= self.min) and (self.max is None or value <= self.max)
                and (self.gt is None or value > self.gt) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        low = f"[{_num(self.min)}" if self.min is not None else f"({_num(self.gt)}" if self.gt is not None else ""
        high = f"{_num(self.max)}]" if self.max is not None else f"{_num(self.lt)})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        for bound, words in ((self.min, "at least"), (self.gt, "above"), (self.max, "at most"), (self.lt, "below")):
            if bound is not None:
                return f"{words} {_num(bound)}"
        return "a finite number"


class Pattern(typing.NamedTuple):
    """The spellings a string field accepts: a regular expression and how to say it."""

    regex: str
    text: str

    def describe(self) -> str:
        return self.text


# named so that a config module declares ``pattern="device"`` without importing anything
PATTERNS = {"device": Pattern(r"auto|cpu|mps|cuda(:[0-9]+)?", "auto, cpu, mps, cuda or cuda:N")}


def _num(x) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def option(default: T, help: str, *, min: float | None = None, max: float | None = None, gt: float | None = None,
           lt: float | None = None, unbounded: bool = False, pattern: str | None = None, **kwargs) -> T:
    """A config field with its help text; typed so that a checker sees the default's type.

    A numeric field (or list of numbers) declares the values it accepts, checked by
    :func:`from_dict`: closed bounds ``min``/``max``, open bounds ``gt``/``lt``, or
    ``unbounded=True`` where any finite value is meaningful. A string field may name a
    pattern of :data:`PATTERNS` its value must match (``pattern="device"``)."""
    metadata: dict[str, Any] = {"help": help}
    if (min, max, gt, lt) != (None, None, None, None):
        if unbounded:
            raise TypeError("option() takes bounds or unbounded=True, not both")
        metadata["range"] = Range(min, max, gt, lt)
    elif unbounded:
        metadata["range"] = Range()
    if pattern is not None:
        metadata["pattern"] = PATTERNS[pattern]
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata, **kwargs)
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def check_declared(name: str, f: dataclasses.Field, value) -> None:
    """Refuse ``value`` outside the range or pattern that field ``f`` declares."""
    if value is None:
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            check_declared(f"{name}[{i}]", f, item)
        return
    bounds = f.metadata.get("range")
    if bounds is not None and isinstance(value, numbers.Real) and not isinstance(value, bool) and value not in bounds:
        raise ValueError(f"config field {name!r} must be {bounds.describe()}, got {value!r}.")
    pattern = f.metadata.get("pattern")
    if pattern is not None and isinstance(value, str) and not re.fullmatch(pattern.regex, value):
        raise ValueError(f"config field {name!r} must be {pattern.describe()}, got {value!r}.")


def check_ranges(cfg, prefix: str = "") -> None:
    """Check a config built in Python (not through :func:`from_dict`) against its declared ranges."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_ranges(value, prefix=f"{prefix}{f.name}.")
        else:
            check_declared(prefix + f.name, f, value)


def section(cls: type[T], help: str) -> T:
    """A nested config section."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_optional(tp) -> tuple[bool, Any]:
    if get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            return True, args[0]
    return False, tp


def check_value(name: str, tp, value):
    """Return ``value`` converted to ``tp`` or raise a readable ValueError."""
    optional, inner = _is_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"config field {name!r} must not be empty (expected {_type_name(tp)}).")
    tp = inner
    origin = get_origin(tp)
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ValueError(f"config field {name!r} must be one of {list(choices)}, got {value!r}.")
        return value
    if origin in (list, tuple):
        (item_tp, *_) = get_args(tp) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config field {name!r} must be a list of {_type_name(item_tp)}, got {value!r}.")
        return [check_value(f"{name}[{i}]", item_tp, v) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config field {name!r} must be true or false, got {value!r}.")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config field {name!r} must be an integer, got {value!r}.")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config field {name!r} must be a number, got {value!r}.")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"config field {name!r} must be a string, got {value!r}.")
        return value
    if tp is Any:
        return value
    raise TypeError(f"unsupported config type {tp!r} for field {name!r}")


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def from_dict(cls: type, data: dict, prefix: str = ""):
    """Build ``cls`` from a (partial) dict, checking names and types."""
    if not isinstance(data, dict):
        raise ValueError(f"config section {prefix or cls.__name__!r} must be a mapping, got {data!r}.")
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(
            f"unknown config field(s) {', '.join(prefix + u for u in unknown)}; "
            f"valid fields are: {', '.join(prefix + n for n in sorted(names))}."
        )
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, data[f.name], prefix=f"{prefix}{f.name}.")
        else:
            kwargs[f.name] = check_value(prefix + f.name, tp, data[f.name])
            check_declared(prefix + f.name, f, kwargs[f.name])
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {str(path)!r} does not exist.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping of field: value, found {type(data).__name__}.")
    return data


def save_yaml(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# -- command-line flags ------------------------------------------------------------------
CONFIG_CLASS = "_config_class"


def add_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", skip: tuple[str, ...] = ()) -> None:
    """Add one ``--field`` flag per config field; unset flags do not override. The parser
    remembers the class (``parser.get_default(CONFIG_CLASS)``), so tests can walk every config the CLI reads."""
    if not prefix:
        parser.set_defaults(**{CONFIG_CLASS: cls})
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp = hints[f.name]
        dest = prefix + f.name
        flag = "--" + dest.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if dataclasses.is_dataclass(tp):
            add_flags(parser, tp, prefix=dest + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        accepted = f.metadata.get("range") or f.metadata.get("pattern")
        accepted_text = f"; {accepted.describe()}" if accepted else ""
        help_text = f"{help_text} (default: {default!r}{accepted_text})".replace("%", "%%")  # argparse formats help
        _, inner = _is_optional(tp)
        origin = get_origin(inner)
        kw: dict[str, Any] = dict(dest=dest, default=argparse.SUPPRESS, help=help_text)
        if inner is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
        elif origin is Literal:
            parser.add_argument(flag, choices=list(get_args(inner)), **kw)
        elif origin in (list, tuple):
            item = (get_args(inner) or (str,))[0]
            parser.add_argument(flag, type=_list_parser(item), metavar="A,B,..", **kw)
        else:
            parser.add_argument(flag, type=inner if inner in (int, float, str) else str, **kw)


def _list_parser(item: type) -> Callable[[str], list]:
    def parse(text: str) -> list:
        return [item(x) for x in text.split(",") if x]

    return parse


def resolve(cls: type, args: argparse.Namespace, config_path: str | None = None, base: dict | None = None):
    """defaults <- base <- YAML file <- flags, checked against ``cls``."""
    data = dict(base or {})
    if config_path:
        data = merge(data, load_yaml(config_path))
    flags: dict = {}
    names: set[str] = set()
    _collect_names(cls, "", names)
    for key, value in vars(args).items():
        if key not in names:
            continue
        node = flags
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return from_dict(cls, merge(data, flags))


def _collect_names(cls, prefix, out):
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            _collect_names(hints[f.name], prefix + f.name + ".", out)
        else:
            out.add(prefix + f.name)
