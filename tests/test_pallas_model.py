"""``model.attention.impl="pallas"`` in training: the same losses as the reference oracle.

Five AdamW steps of the training loop's own step function (``attnlab.train``) on
the same batches, once with the fused kernel (interpret mode on CPU) and once
with ``impl="reference"``: per-step losses must agree to float32 round-off.
"""

import numpy as np
import pytest
from helpers import tiny_config

from attnlab import config_lib
from attnlab.models import TransformerLM
from attnlab.engine.training import init_state, make_optimizer, make_train_step

CONFIGS = {
    "rope_causal_mha": dict(),
    "alibi_window_gqa": dict(model__attention__pattern="sliding_window",
                             model__attention__window=9, model__attention__num_kv_heads=2),
    "t5_bigbird_mqa": dict(model__attention__pattern="bigbird", model__attention__block=8,
                           model__attention__num_kv_heads=1),
    # a learned modifier the kernel knows nothing about (issue 18): gradients of r1, r2
    "kerple_causal_gqa": dict(model__attention__num_kv_heads=2),
}
POSITION = {"rope_causal_mha": "rope", "alibi_window_gqa": "alibi", "t5_bigbird_mqa": "t5",
            "kerple_causal_gqa": "kerple"}
DEFAULT_TIER = ()   # all slow: tests/test_kv_cache_pallas.py runs models through the kernel by default


def _losses(name, impl, steps=5):
  cfg = config_lib.resolve(tiny_config(POSITION[name], model__attention__impl=impl,
                                       model__attention__block_q=16, model__attention__block_kv=16,
                                       data__seq_len=48, **CONFIGS[name]))
  model = TransformerLM(cfg.model)
  tx = make_optimizer(cfg.train)
  state = init_state(model, tx, cfg)
  step = make_train_step(model, tx, cfg.train.seed, dropout=False)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    tokens = rng.integers(0, 256, (4, cfg.data.seq_len + 1)).astype(np.int32)
    state, metrics = step(state, tokens[:, :-1], tokens[:, 1:])
    losses.append(float(metrics["loss"]))
  return np.array(losses), state["params"]


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow)
                                  if n not in DEFAULT_TIER else n for n in CONFIGS])
def test_five_training_steps_match_reference(name):
  (pallas, p_params), (reference, r_params) = _losses(name, "pallas"), _losses(name, "reference")
  assert np.all(np.isfinite(pallas))
  assert pallas[-1] < pallas[0]                       # it trains
  np.testing.assert_allclose(pallas, reference, rtol=1e-5, atol=0)
  if name.startswith("kerple"):   # the modifier's own leaves learned alike
    init = _losses(name, "reference", steps=0)[1]
    for leaf in ("kerple_r1", "kerple_r2"):
      got, want = p_params["block_0"]["attention"][leaf], r_params["block_0"]["attention"][leaf]
      np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
      assert np.abs(np.asarray(want) - init["block_0"]["attention"][leaf]).min() > 1e-4
