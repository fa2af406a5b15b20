"""Runs mesh checks on 8 virtual CPU devices, in its own process (the device count is
fixed when JAX starts). Used by tests/test_parallel.py; prints one JSON line.

  python tests/mesh_worker.py train WORKDIR MESH STEPS STOP_AFTER [key=value ...]
  python tests/mesh_worker.py ring [cover|all]
  python tests/mesh_worker.py restore WORKDIR STEP MESH
"""

import json
import sys

from cpu_devices import use_cpu_devices

use_cpu_devices(8)

from attnlab import workdir as workdir_lib  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def mesh_overrides(text):
  data, fsdp, tensor, sequence = (int(x) for x in text.split(","))
  return dict(mesh__data=data, mesh__fsdp=fsdp, mesh__tensor=tensor, mesh__sequence=sequence)


def parse_value(v):
  for cast in (int, float):
    try:
      return cast(v)
    except ValueError:
      pass
  return v


def config(mesh, steps, extra):
  from helpers import tiny_config
  overrides = dict(train__steps=steps, train__log_every=1, train__eval_every=steps,
                   train__checkpoint_every=5, train__warmup_steps=1, **mesh_overrides(mesh))
  overrides.update({k: parse_value(v) for k, v in (e.split("=") for e in extra)})
  position = overrides.pop("position", "rope")
  return tiny_config(position, **overrides)


def train(workdir, mesh, steps, stop_after, *extra):
  from attnlab.engine import training as train_lib
  cfg = config(mesh, int(steps), extra)
  train_lib.train_and_evaluate(cfg, workdir, stop_after=int(stop_after), progress=False)
  records = workdir_lib.read_metrics(workdir)
  return {"losses": {r["step"]: r["loss"] for r in records if r["split"] == "train"}}


# (mesh shape, layout, mask, ALiBi): every mesh and layout, each mask and bias twice
RING_COVER = (((2, 1, 1, 4), "zigzag", "causal", False), ((1, 1, 2, 4), "striped", "full", True),
              ((1, 1, 1, 8), "contiguous", "causal", True), ((1, 1, 1, 8), "zigzag", "full", False))


def ring(which="cover"):
  """Ring attention against the reference: ``cover`` runs RING_COVER, ``all`` every mesh x
  {causal, full} x {no bias, ALiBi}."""
  from attnlab import positional
  from attnlab.attention import dot_product_attention, masks
  b, n, h, hkv, d = 2, 32, 4, 2, 8
  keys = jax.random.split(jax.random.PRNGKey(0), 4)
  q = jax.random.normal(keys[0], (b, n, h, d))
  k, v = (jax.random.normal(x, (b, n, hkv, d)) for x in keys[1:3])
  w = jax.random.normal(keys[3], (b, n, h, d))
  slopes = jnp.asarray(positional.alibi_slopes(h))
  auto = (jax.sharding.AxisType.Auto,) * 4
  results = {}
  layouts = (((2, 1, 1, 4), "zigzag"), ((1, 1, 2, 4), "striped"),
             ((1, 1, 1, 8), "contiguous"), ((1, 1, 1, 8), "zigzag"))
  cases = RING_COVER if which == "cover" else [
      (shape, layout, mask, alibi) for shape, layout in layouts
      for mask in ("causal", "full") for alibi in (False, True)]
  for shape, layout, mask_name, alibi in cases:
    mesh = jax.make_mesh(shape, ("data", "fsdp", "tensor", "sequence"), axis_types=auto)
    mask = masks.causal() if mask_name == "causal" else None
    def loss(impl, q, k, v, slopes):
      bias = positional.AlibiBias(slopes=slopes) if alibi else None
      out = dot_product_attention(q, k, v, mask=mask, bias=bias, impl=impl,
                                  ring_layout=layout)
      return jnp.sum(out * w), out
    grad = lambda impl: jax.value_and_grad(  # noqa: E731
        lambda *a: loss(impl, *a), argnums=(0, 1, 2, 3), has_aux=True)
    with jax.set_mesh(mesh):
      (_, out), grads = jax.jit(grad("ring"))(q, k, v, slopes)
    (_, ref), ref_grads = grad("reference")(q, k, v, slopes)
    errors = [float(jnp.abs(out - ref).max() / jnp.abs(ref).max())]
    errors += [float(jnp.abs(g - r).max() / max(1e-6, float(jnp.abs(r).max())))
               for g, r in zip(grads, ref_grads)]
    name = f"{'x'.join(map(str, shape))}/{layout}/{mask_name}/{'alibi' if alibi else 'none'}"
    results[name] = max(errors[:4] + ([errors[4]] if alibi else []))
  return {"ring": results}


def restore(workdir, step, mesh):
  """The checkpoint restored under MESH and onto one device holds identical values."""
  import pathlib
  from attnlab import config_lib, parallel
  from attnlab.engine import training as train_lib
  from attnlab.models import TransformerLM
  cfg = config_lib.resolve(config(mesh, 10, []))
  model = TransformerLM(cfg.model)
  tx = train_lib.make_optimizer(cfg.train)
  abstract = jax.eval_shape(lambda: train_lib.init_state(model, tx, cfg))
  ckpt = workdir_lib.Checkpointer(pathlib.Path(workdir) / "checkpoints", 3)
  mesh_ = parallel.make_mesh(cfg)
  sharded = ckpt.restore(int(step), abstract, parallel.state_shardings(abstract, mesh_))
  single = ckpt.restore(int(step), abstract)
  ckpt.close()
  same = jax.tree.all(jax.tree.map(lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
                                   sharded, single))
  kinds = sorted({str(x.sharding.spec) for x in jax.tree.leaves(sharded)})
  return {"identical": same, "specs": kinds}


if __name__ == "__main__":
  command, *args = sys.argv[1:]
  print(json.dumps({"train": train, "ring": ring, "restore": restore}[command](*args)))
