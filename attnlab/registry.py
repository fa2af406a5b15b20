"""Registries (one per axis: kind, pattern, position, impl) and the fields their entries declare.

A config string is the whole interface: ``REGISTRY.get(name)`` returns the
registered object, and an unknown name raises a ``ConfigError`` that names the
config field, the bad value and every valid name.

An entry declares the config fields it reads as ``Field``s (name, default, valid
range, what it means). Config defaults, validation, the ``--config.*`` flags and the
docs are built from those declarations (``attnlab.config_lib``), so a new entry's
fields need no edits anywhere else.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A bad configuration value: the message names the field, value and valid choices."""


def nearest(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
  """Up to ``n`` names of ``valid`` closest to ``name`` (for "did you mean" messages)."""
  return difflib.get_close_matches(name, list(valid), n=n, cutoff=0.5)


class Registry(Generic[T]):
  """Maps names to objects for one config field (e.g. ``model.attention.impl``)."""

  def __init__(self, field: str):
    self.field = field
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """Decorator: ``@REGISTRY.register("name")`` adds the decorated object."""

    def add(obj: T) -> T:
      if name in self._entries:
        raise ValueError(f"{self.field}: {name!r} is registered twice")
      self._entries[name] = obj
      return obj

    return add

  def get(self, name: str) -> T:
    if name not in self._entries:
      raise ConfigError(
          f"{self.field}={name!r} is not valid; valid names: {', '.join(self.names())}")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def items(self) -> list[tuple[str, T]]:
    return [(name, self._entries[name]) for name in self.names()]

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())


@dataclasses.dataclass(frozen=True)
class Field:
  """A config field a registry entry reads, with its default and what is valid.

  The value's type follows the default: an ``int`` default takes integers (not bools),
  a ``float`` default any finite real number, a ``bool`` a bool, a ``str`` a string, a
  ``tuple`` a tuple or list. ``minimum`` / ``maximum`` bound numbers (inclusive),
  ``choices`` lists the valid values, and ``check(value, context)`` returns why a value
  is invalid (or None) when the rule relates it to other fields: ``context`` holds the
  config block the field lives in (``block``) and the run's ``seq_len``.
  """
  name: str
  default: Any
  doc: str = ""
  minimum: float | None = None
  maximum: float | None = None
  choices: tuple | None = None
  check: Callable[[Any, Mapping], str | None] | None = None
  applies: Callable[[Mapping], bool] | None = None

  def problem(self, value, context: Mapping | None = None) -> str | None:
    """Why ``value`` is invalid for this field (a sentence without the field name), or None."""
    default = self.default
    if isinstance(default, bool):
      if not isinstance(value, bool):
        return "must be True or False"
    elif isinstance(default, int):
      if not isinstance(value, int) or isinstance(value, bool):
        return "must be an integer" + self._range_words()
    elif isinstance(default, float):
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "must be a finite number" + self._range_words()
    elif isinstance(default, str):
      if not isinstance(value, str):
        return "must be a string"
    elif isinstance(default, tuple):
      if not isinstance(value, (tuple, list)):
        return "must be a tuple"
    if self.choices is not None and value not in self.choices:
      return f"is not valid; valid: {', '.join(map(str, self.choices))}"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      if (self.minimum is not None and value < self.minimum) or (
          self.maximum is not None and value > self.maximum):
        kind = " an integer" if isinstance(default, int) and not isinstance(default, bool) else ""
        return f"must be{kind}" + self._range_words()
    if self.check is not None:
      return self.check(value, context or {})
    return None

  def _range_words(self) -> str:
    if self.minimum is not None and self.maximum is not None:
      return f" in [{self.minimum}, {self.maximum}]"
    if self.minimum is not None:
      return f" >= {self.minimum}"
    if self.maximum is not None:
      return f" <= {self.maximum}"
    return ""

  def validate(self, value, path: str, context: Mapping | None = None, owner: str = "") -> None:
    """Raise ``ConfigError`` naming ``path``, the value and what is valid."""
    why = self.problem(value, context)
    if why:
      suffix = f" ({owner})" if owner else ""
      sep = "" if why.startswith(":") else " "
      raise ConfigError(f"{path}={value!r}{sep}{why}{suffix}")


class Declared(Mapping):
  """A config block read through its declarations: a declared field the block lacks reads
  as its declared default, so no reader writes a default of its own.

  ``block``: a mapping (a ``ConfigDict`` or dict); ``fields``: the ``Field``s that may be
  read. Attribute and item access both work (``view.theta``, ``view["theta"]``).
  """

  def __init__(self, block: Mapping, fields: Iterable[Field]):
    object.__setattr__(self, "_block", block)
    object.__setattr__(self, "_defaults", {f.name: f.default for f in fields})

  def __getitem__(self, name: str):
    if name in self._block:
      return self._block[name]
    if name in self._defaults:
      return self._defaults[name]
    raise KeyError(name)

  def __getattr__(self, name: str):
    try:
      return self[name]
    except KeyError:
      raise AttributeError(name) from None

  def __iter__(self):
    return iter(dict.fromkeys([*self._block, *self._defaults]))

  def __len__(self) -> int:
    return len(dict.fromkeys([*self._block, *self._defaults]))

  def __setattr__(self, name, value):
    raise TypeError("a Declared view is read-only")


def merge_fields(groups: Iterable[tuple[str, Iterable[Field]]]) -> dict[str, Field]:
  """{name: Field} over several entries' declarations; one name must mean one default.

  ``groups``: (owner description, fields) pairs, e.g. ("pattern 'sliding_window'", ...).
  """
  out: dict[str, Field] = {}
  owners: dict[str, str] = {}
  for owner, fields in groups:
    for f in fields:
      if f.name in out and out[f.name].default != f.default:
        raise ValueError(f"field {f.name!r} is declared with default {out[f.name].default!r} "
                         f"by {owners[f.name]} and {f.default!r} by {owner}; a shared field "
                         f"needs one default")
      out.setdefault(f.name, f)
      owners.setdefault(f.name, owner)
  return out
