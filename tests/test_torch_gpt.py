"""scripts/torch_gpt.py, the PyTorch model bench_train.py times beside attnlab's, computes
the same function: loaded with an attnlab baby-GPT's weights it gives the same loss and
the same gradients (so the side-by-side timing compares equal arithmetic). PyTorch is an
optional benchmark dependency: without it this test is skipped."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import REPO

torch = pytest.importorskip("torch")

from attnlab import config_lib  # noqa: E402
from attnlab.models import TransformerLM  # noqa: E402


def _load(name, path):
  if name in sys.modules:         # once per process (bench_train defines absl flags)
    return sys.modules[name]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def test_same_loss_and_gradients_as_attnlab():
  torch_gpt = _load("torch_gpt", REPO / "scripts" / "torch_gpt.py")
  lm = _load("lm_configs", REPO / "configs" / "lm.py")
  cfg = config_lib.resolve(lm.get_config("baby_gpt"))
  model = TransformerLM(cfg.model)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8), jnp.int32))["params"]
  params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape),
                        params)                          # norms away from 1
  tokens = np.random.default_rng(0).integers(0, 256, (3, cfg.data.seq_len + 1))

  def loss_fn(p):
    logits = model.apply({"params": p}, jnp.asarray(tokens[:, :-1], jnp.int32))
    logp = jax.nn.log_softmax(logits.astype(jnp.float32))
    return -jnp.mean(jnp.take_along_axis(logp, jnp.asarray(tokens[:, 1:])[..., None], -1))

  loss, grads = jax.value_and_grad(loss_fn)(params)

  tm, _, _ = torch_gpt.from_config(cfg)
  t = lambda x: torch.tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
  with torch.no_grad():
    tm.tok.weight.copy_(t(params["embed"]["embedding"]))
    tm.pos.weight.copy_(t(params["position_table"]))
    tm.ln_f.weight.copy_(t(params["norm_final"]["scale"]))
    for i, block in enumerate(tm.blocks):
      p = params[f"block_{i}"]
      block.ln1.weight.copy_(t(p["norm_attention"]["scale"]))
      block.ln2.weight.copy_(t(p["norm_mlp"]["scale"]))
      block.qkv.weight.copy_(t(p["attention"]["qkv"]["kernel"]).T)   # flax [in, out]
      block.proj.weight.copy_(t(p["attention"]["out"]["kernel"]).T)
      block.up.weight.copy_(t(p["mlp"]["up"]["kernel"]).T)
      block.down.weight.copy_(t(p["mlp"]["down"]["kernel"]).T)
  tl = tm(torch.tensor(tokens[:, :-1]), torch.tensor(tokens[:, 1:]))
  tl.backward()
  assert abs(float(tl.detach()) - float(loss)) < 1e-5 * max(1.0, float(loss))
  pairs = [(tm.tok.weight.grad, grads["embed"]["embedding"]),
           (tm.blocks[0].qkv.weight.grad.T, grads["block_0"]["attention"]["qkv"]["kernel"]),
           (tm.blocks[3].down.weight.grad.T, grads["block_3"]["mlp"]["down"]["kernel"]),
           (tm.pos.weight.grad, grads["position_table"])]
  for got, want in pairs:
    np.testing.assert_allclose(got.numpy(), np.asarray(want), rtol=2e-3, atol=2e-6)


def test_side_by_side_training_trains_both_on_the_same_schedule_and_reports_validation():
  """bench_train.py --torch --train at a tiny size: every step of both is timed, both are
  evaluated at the same steps on the same batches, and both learn (validation loss well
  below the uniform ln 256 = 5.545 after 40 steps on tinyshakespeare): a PyTorch model left
  at learning rate 0 (a schedule not applied) would stay near 5.5."""
  bench = _load("bench_train", REPO / "scripts" / "bench_train.py")
  lm = _load("lm_configs", REPO / "configs" / "lm.py")
  cfg = lm.get_config("baby_gpt")
  cfg.model.update(num_layers=1, d_model=32)
  cfg.model.attention.update(num_heads=2, num_kv_heads=2)
  cfg.train.update(steps=40, warmup_steps=5, eval_every=20, eval_batches=3, lr=1e-2)
  r = bench.train_side_by_side(cfg, block=10, log_every=10)
  assert [s for s, _ in r["valid_loss"]["attnlab"]] == [s for s, _ in r["valid_loss"]["torch"]] \
      == [20, 40]
  assert [s for s, _ in r["train_loss"]["torch"]] == [1, 10, 20, 30, 40]
  for name in ("attnlab", "torch"):
    first, last = r["valid_loss"][name][0][1], r["valid_loss"][name][-1][1]
    assert last < np.log(256) - 2.0 and last <= first + 0.05, (name, r["valid_loss"][name])
  assert r["attnlab_median_ms"] > 0 and r["torch_median_ms"] > 0


def test_seed_summary_sets_the_gap_against_the_spread_over_seeds():
  """Hand-worked: three seeds with losses (attnlab, PyTorch) = (1.80, 1.78), (1.76, 1.77),
  (1.78, 1.75): means 1.78 and 1.7667, sample sds 0.02 and 0.01528, gaps 0.02, -0.01,
  0.03 (mean 0.01333, sd 0.02082); step ratios 1.1, 0.9, 1.0 -> median 1.0."""
  bench = _load("bench_train", REPO / "scripts" / "bench_train.py")
  rows = [{"seed": s, "attnlab_valid_loss": a, "torch_valid_loss": t, "ratio": r}
          for s, a, t, r in [(0, 1.80, 1.78, 1.1), (1, 1.76, 1.77, 0.9), (2, 1.78, 1.75, 1.0)]]
  s = bench.seed_summary(rows)
  assert s["seeds"] == [0, 1, 2]
  assert s["attnlab_valid_mean"] == pytest.approx(1.78)
  assert s["attnlab_valid_sd"] == pytest.approx(0.02)
  assert s["torch_valid_mean"] == pytest.approx(1.766667, abs=1e-6)
  assert s["torch_valid_sd"] == pytest.approx(0.0152753, abs=1e-6)
  assert s["valid_gap_mean"] == pytest.approx(0.0133333, abs=1e-6)
  assert s["valid_gap_sd"] == pytest.approx(0.0208167, abs=1e-6)
  assert s["ratio"] == pytest.approx(1.0)
