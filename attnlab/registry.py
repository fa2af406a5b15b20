"""A tiny name -> object registry, one per axis (kind, pattern, position, impl).

A config string is the whole interface: ``REGISTRY.get(name)`` returns the
registered object, and an unknown name raises a ``ConfigError`` that names the
config field, the bad value and every valid name.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A bad configuration value: the message names the field, value and valid choices."""


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

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())
