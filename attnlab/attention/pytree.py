"""Frozen dataclasses that are JAX pytrees (patterns and score modifiers)."""

import dataclasses

import jax


def pytree_dataclass(cls=None, *, data: tuple[str, ...] = ()):
  """Frozen dataclass registered as a pytree: ``data`` fields are leaves, the rest static."""

  def wrap(cls):
    cls = dataclasses.dataclass(frozen=True)(cls)
    meta = [f.name for f in dataclasses.fields(cls) if f.name not in data]
    return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=meta)

  return wrap if cls is None else wrap(cls)
