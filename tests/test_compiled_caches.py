"""attnlab.runtime's compiled caches: one ``clear_compiled_caches()`` empties every cache of
compiled programs (and JAX's), and a cached program is traced afresh under another backend
or mesh, so ``impl='auto'``'s choice is never one made for another machine.

The side effect that counts traces is a spy on ``attnlab.attention.core.choose_impl``:
``auto`` calls it while tracing and never when a compiled program runs. A monkeypatched
``jax.default_backend`` of "gpu" is only traced under (``jax.eval_shape``), never run.
"""

import jax
import jax.numpy as jnp
import pytest

import attnlab
from attnlab import runtime
from attnlab.attention import core


@pytest.fixture
def choices(monkeypatch):
  """(backend, impl) of every ``impl='auto'`` choice made while tracing."""
  made = []
  choose = core.choose_impl

  def spy(*args, **kwargs):
    name, reason = choose(*args, **kwargs)
    made.append((jax.default_backend(), name))
    return name, reason

  monkeypatch.setattr(core, "choose_impl", spy)
  return made


@runtime.compiled_cache(maxsize=4)
def _auto_program(heads: int):
  """A program whose trace asks ``auto`` for an impl (cached like attnlab's programs)."""
  return jax.jit(lambda q: core.dot_product_attention(q, q, q, impl="auto"))


def _q(heads=2):
  return jnp.ones((1, 16, heads, 8), jnp.float32)


def _on_gpu(monkeypatch):
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")


def test_a_program_traced_with_auto_is_traced_again_after_clearing(choices, monkeypatch):
  _on_gpu(monkeypatch)
  program = _auto_program(2)
  jax.eval_shape(program, _q())
  assert _auto_program(2) is program             # cached: the same jitted program ...
  jax.eval_shape(_auto_program(2), _q())
  assert len(choices) == 1                       # ... and its trace is reused
  attnlab.clear_compiled_caches()
  assert _auto_program(2) is not program
  jax.eval_shape(_auto_program(2), _q())
  assert len(choices) == 2 and choices[0] == choices[1] and choices[0][0] == "gpu"


def test_the_cache_keys_on_the_backend(choices, monkeypatch):
  """Without clearing: a program traced on CPU is not reused under "gpu" (where ``auto``
  chooses otherwise), and the CPU program is still there when the backend is back."""
  on_cpu = _auto_program(2)
  jax.eval_shape(on_cpu, _q())
  with monkeypatch.context() as m:
    _on_gpu(m)
    on_gpu = _auto_program(2)
    assert on_gpu is not on_cpu
    jax.eval_shape(on_gpu, _q())
  assert _auto_program(2) is on_cpu
  jax.eval_shape(_auto_program(2), _q())
  assert [backend for backend, _ in choices] == ["cpu", "gpu"]
  # with tokamax installed, auto picks it on "gpu" and xla on CPU; either way each backend
  # got a choice of its own


def test_a_bare_jit_would_keep_the_stale_choice(choices, monkeypatch):
  """Why the key matters: JAX's own trace cache does not look at the backend's name."""
  program = jax.jit(lambda q: core.dot_product_attention(q, q, q, impl="auto"))
  jax.eval_shape(program, _q())
  _on_gpu(monkeypatch)
  jax.eval_shape(program, _q())
  assert choices == [("cpu", choices[0][1])]     # traced once: the CPU choice stays


def test_the_cache_keys_on_the_mesh():
  outside = _auto_program(2)
  mesh = jax.make_mesh((1,), ("sequence",))
  with jax.set_mesh(mesh):
    assert runtime.trace_context()[1] == (("sequence", 1, str(mesh.axis_types[0])),)
    inside = _auto_program(2)
    assert inside is not outside and _auto_program(2) is inside
  assert runtime.trace_context() == (jax.default_backend(), ())
  assert _auto_program(2) is outside


def test_clearing_empties_every_registered_cache_and_jaxs(monkeypatch):
  from attnlab.analysis import capture
  from attnlab.attention import pallas_impl
  from attnlab.engine import evaluation
  from attnlab.inference import generation
  caches = [evaluation._nll_scorer, generation._compiled, generation.decode_program,
            generation._stream, generation.recompute_program, capture._capture_fn,
            pallas_impl._score_mod_problem, _auto_program]
  _auto_program(3)
  cleared = []
  monkeypatch.setattr(jax, "clear_caches", lambda: cleared.append(True))
  for cache in caches:
    assert cache.cache_info().maxsize is not None     # a compiled_cache, bounded
  attnlab.clear_compiled_caches()
  assert cleared == [True]
  assert all(cache.cache_info().currsize == 0 for cache in caches)


def test_evaluations_scorer_is_one_per_backend(monkeypatch):
  from helpers import tiny_config

  from attnlab import config_lib
  from attnlab.engine import evaluation
  model_cfg = config_lib.resolve(tiny_config()).model
  scorer = evaluation.nll_scorer(model_cfg)
  assert evaluation.nll_scorer(model_cfg) is scorer
  with monkeypatch.context() as m:
    _on_gpu(m)
    assert evaluation.nll_scorer(model_cfg) is not scorer
  assert evaluation.nll_scorer(model_cfg) is scorer
  attnlab.clear_compiled_caches()
  assert evaluation.nll_scorer(model_cfg) is not scorer


def test_the_decorated_function_keeps_its_name_doc_and_unwrapped_form():
  assert _auto_program.__name__ == "_auto_program"
  assert "auto" in _auto_program.__doc__
  assert _auto_program.__wrapped__(2) is not _auto_program.__wrapped__(2)
