"""Frozen dataclasses that are JAX pytrees (patterns and score modifiers)."""

import dataclasses

import jax


def pytree_dataclass(cls=None, *, data: tuple[str, ...] = (), per_head=(),
                     per_query: tuple[str, ...] = (), per_key: tuple[str, ...] = ()):
  """Frozen dataclass registered as a pytree: ``data`` fields are leaves, the rest static.

  ``per_head``: the leaves indexed by attention head, as names (heads on axis 0) or a
  ``{name: axis}`` mapping; a score modifier's ``select_heads`` slices them (the fused
  kernel evaluates one head at a time), so its author writes only the function.
  ``per_query`` / ``per_key``: the leaves indexed by query / key position on axis 1
  (``attnlab.attention.operands``: implementations hand ``__call__`` aligned slices).
  """

  def wrap(cls):
    cls = dataclasses.dataclass(frozen=True)(cls)
    meta = [f.name for f in dataclasses.fields(cls) if f.name not in data]
    heads = dict(per_head) if isinstance(per_head, dict) else {name: 0 for name in per_head}
    unknown = sorted(set(heads) - set(data))
    if unknown:
      raise TypeError(f"{cls.__name__}: per_head names {unknown}, which are not data fields "
                      f"(leaves): {list(data)}")
    if heads or not hasattr(cls, "per_head"):
      cls.per_head = heads
    for kind, names in (("per_query", per_query), ("per_key", per_key)):
      unknown = sorted(set(names) - set(data))
      if unknown:
        raise TypeError(f"{cls.__name__}: {kind} names {unknown}, which are not data fields")
      if names or not hasattr(cls, kind):
        setattr(cls, kind, tuple(names))
    return jax.tree_util.register_dataclass(cls, data_fields=list(data), meta_fields=meta)

  return wrap if cls is None else wrap(cls)
