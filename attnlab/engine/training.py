"""Config-driven language-model training with exact resume (the engine behind
``python -m attnlab.train``).

Writes into ``workdir`` (layout: ``attnlab.workdir``): ``config.json`` (the resolved config), ``metrics.jsonl``
(one JSON object per line: ``step``, ``split`` = "train" | "valid", ``loss``, ...),
``loss.png`` (the curves, at the end),
TensorBoard events under ``tensorboard/`` and orbax checkpoints under
``checkpoints/``. Re-running the same command resumes from the last checkpoint;
batches and dropout keys are pure functions of (seed, step), so the resumed run
is bit-identical to an uninterrupted one. A non-finite loss stops the run,
naming the step; the last good checkpoint stays intact.
"""

from __future__ import annotations

import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attnlab import config_lib, data, parallel, positional
from attnlab.attention import KINDS
from attnlab.models import build_lm, decay_mask, model_settings, num_params
from attnlab import workdir as workdir_lib
from attnlab.engine import evaluation, loop
from attnlab.engine.loop import TrainingDiverged  # noqa: F401  (raised by the loop)
from attnlab.workdir import MetricsLog, plot_metrics, write_or_check_config

LN2 = math.log(2.0)


# ----------------------------------------------------------------------------- pieces


def make_optimizer(t, model_cfg=None) -> optax.GradientTransformation:
  """AdamW with linear warmup, cosine decay to ``lr * min_lr_ratio`` and global-norm clipping.

  Weight decay applies as ``models.decay_mask(model_cfg)`` says: parameters a position
  scheme declares follow their declaration, the others are decayed when of rank >= 2
  (matrices, embeddings), as in nanoGPT (the rank rule alone when ``model_cfg`` is None).
  """
  schedule = learning_rate_schedule(t)
  mask = (decay_mask(model_cfg) if model_cfg is not None
          else (lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)))
  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip),
      optax.adamw(schedule, b1=t.b1, b2=t.b2, weight_decay=t.weight_decay, mask=mask))


def learning_rate_schedule(t):
  """Linear warmup over ``train.warmup_steps`` (at most ``steps - 1``: a short run warms up
  for the steps it has), then cosine decay to ``lr * min_lr_ratio`` at ``train.steps``."""
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=t.lr, warmup_steps=min(t.warmup_steps, max(t.steps - 1, 0)),
      decay_steps=t.steps, end_value=t.lr * t.min_lr_ratio)


def init_state(model, tx, cfg) -> dict[str, Any]:
  """``{'step', 'params', 'opt_state'}`` from ``train.seed``."""
  tokens = jnp.zeros((1, cfg.data.seq_len), jnp.int32)
  params = model.init(jax.random.PRNGKey(cfg.train.seed), tokens)["params"]
  return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}


def token_loss(model, params, inputs, targets, weights=None, *, deterministic=True, rng=None,
               positions=None, segment_ids=None, aux_weight: float = 0.0):
  """Mean cross-entropy (nats) of next-token prediction. inputs, targets: int [batch, seq].

  ``weights`` (float [batch, seq], optional) scores only some targets (task answers, or
  targets across a document boundary). ``segment_ids`` (int [batch, seq], optional):
  packed documents, each token attends within its own (pass ``positions`` restarting in
  each document); ``positions`` (int [batch, seq]) default to 0..seq-1. ``aux_weight`` > 0
  adds that times the mean of the auxiliary losses the model sows into ``losses`` (the
  routed MLP's load balancing, ``model.moe_aux_loss``).
  """
  rngs = {} if rng is None else {"dropout": rng, "features": jax.random.fold_in(rng, 2)}
  documents = {} if segment_ids is None else {"segment_ids": segment_ids}
  aux = 0.0
  if aux_weight:
    logits, sown = model.apply({"params": params}, inputs, positions,
                               deterministic=deterministic, rngs=rngs, mutable=["losses"],
                               **documents)
    values = jax.tree_util.tree_leaves(sown.get("losses", {}))
    aux = aux_weight * sum(values) / max(len(values), 1)
  else:
    logits = model.apply({"params": params}, inputs, positions, deterministic=deterministic,
                         rngs=rngs, **documents)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  if weights is None:
    return losses.mean() + aux
  return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0) + aux


def make_train_step(model, tx, seed: int, dropout: bool, random_positions_max: int = 0,
                    redraw_features: bool = False, state_sharding=None):
  """Jitted ``(state, inputs, targets[, weights, segment_ids, positions]) -> (state, metrics)``
  (the optional parts: ``token_loss``; packed documents pass all three).

  Dropout keys, Performer feature keys (``redraw_features``) and, when
  ``random_positions_max`` > 0, the randomized positions of the batch (sorted,
  distinct, from ``[0, random_positions_max)``) derive from (seed, step).
  """

  settings = model_settings(model.cfg) if hasattr(model, "cfg") else {}
  aux_weight = float(settings.moe_aux_loss) if settings.get("mlp") == "moe" else 0.0

  def train_step(state, inputs, targets, weights=None, segment_ids=None, positions=None):
    step_key = jax.random.fold_in(jax.random.PRNGKey(seed), state["step"])
    rng = step_key if dropout or redraw_features else None
    if random_positions_max:
      if positions is not None:
        raise ValueError("make_train_step: randomized positions replace the batch's "
                         "positions; a batch with positions (packed documents) cannot use them")
      positions = positional.randomized_positions(
          jax.random.fold_in(step_key, 1), inputs.shape[1], random_positions_max)
      positions = jnp.broadcast_to(positions, inputs.shape)
    loss, grads = jax.value_and_grad(
        lambda p: token_loss(model, p, inputs, targets, weights, deterministic=not dropout,
                             rng=rng, positions=positions, segment_ids=segment_ids,
                             aux_weight=aux_weight)
    )(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new_state, {"loss": loss, "grad_norm": optax.global_norm(grads)}

  if state_sharding is None:
    return jax.jit(train_step, donate_argnums=(0,))
  return jax.jit(train_step, donate_argnums=(0,), out_shardings=(state_sharding, None))


def make_eval_step(model):
  """Jitted ``(params, inputs, targets[, weights, segment_ids, positions]) -> mean loss``
  (``token_loss``)."""
  return jax.jit(lambda params, inputs, targets, weights=None, segment_ids=None, positions=None:
                 token_loss(model, params, inputs, targets, weights, positions=positions,
                            segment_ids=segment_ids))


def validation_loss(eval_step, params, batches, cfg, mesh=None) -> float:
  """Mean loss over ``train.eval_batches`` fixed random batches of the valid split."""
  put = (lambda b: b) if mesh is None else (lambda b: parallel.put_batch(b, mesh))  # noqa: E731
  losses = [eval_step(params, *put(batches.valid(i))) for i in range(cfg.train.eval_batches)]
  return float(np.mean(jax.device_get(losses)))


# ----------------------------------------------------------------------------- the run


def train_and_evaluate(config, workdir, *, stop_after: int | None = None,
                       progress: bool = True, batches: data.Batches | None = None,
                       hooks: tuple = (), restart: bool = False,
                       accept_data_change: bool = False) -> dict[str, Any]:
  """Train (or resume) the run in ``workdir``; returns the final state and last metrics.

  ``stop_after`` ends this invocation once that many total steps are done (as if
  interrupted there); re-running continues from the last checkpoint.
  ``batches`` replaces the data the config describes (``data.make_batches(cfg)``) with
  any ``data.Batches`` of the same shapes, [train.batch_size, data.seq_len] (a third
  element, float weights [batch, seq], scores only some targets; a fourth and fifth, int
  segment ids and positions, pack documents); it must be a pure function of the step,
  like the default, for resumed runs to be exact.
  ``hooks``: ``hook(state, step, train_losses)`` at every evaluation (``loop.run_steps``).

  A workdir holds one run: another config is refused, other data is refused unless
  ``accept_data_change``, and a run that wrote a checkpoint never starts again from step 0
  (all its checkpoints unreadable, say) unless ``restart`` (``docs/guarantees.md``).
  """
  cfg = config_lib.resolve(config)
  workdir = pathlib.Path(workdir)
  batches = data.make_batches(cfg) if batches is None else batches
  batches.valid(0)  # fail early (a text too short, a task length too small)
  mesh = parallel.make_mesh(cfg)  # fail early: the mesh must match the devices
  writer = jax.process_index() == 0      # one process writes the workdir
  if writer:
    loop.prepare_workdir(workdir)
  with workdir_lib.lock(workdir, enabled=writer):
    checkpointer = workdir_lib.Checkpointer(workdir / "checkpoints", cfg.train.keep_checkpoints)
    metrics = None
    try:
      model = build_lm(cfg.model)
      tx = make_optimizer(cfg.train, cfg.model)
      with jax.set_mesh(mesh):
        abstract = jax.eval_shape(lambda: init_state(model, tx, cfg))
        shardings = parallel.state_shardings(abstract, mesh)
        if writer:       # before restoring: another config's checkpoint is refused, not read
          write_or_check_config(cfg, workdir)
        start, state = loop.restore_or_init(
            checkpointer, abstract, shardings,
            lambda: jax.jit(lambda: init_state(model, tx, cfg), out_shardings=shardings)())
        if writer:
          workdir_lib.refuse_silent_restart(workdir, start, restart)
          workdir_lib.check_data(workdir, data_identity(batches, cfg), start, accept_data_change)
          metrics = MetricsLog(workdir, start)
          workdir_lib.record_start(workdir, start)
        if start and progress:
          print(f"{workdir}: resuming from the checkpoint at step {start}")
        state, last = _run(cfg, workdir, model, tx, mesh, shardings, state, checkpointer,
                           metrics, start, stop_after, progress, batches, hooks, writer)
    except BaseException as e:         # closing must not hide the error that stopped the run
      workdir_lib.close_all(checkpointer, metrics, failing=e)
      raise
    workdir_lib.close_all(checkpointer, metrics)
    end = cfg.train.steps if stop_after is None else min(cfg.train.steps, stop_after)
    if end == cfg.train.steps and writer:
      plot_metrics(workdir)
  return {"state": state, "metrics": last, "config": cfg}


def data_identity(batches: data.Batches, cfg) -> dict:
  """What ``batches`` are, for the resume check: a corpus's own identity, or (generated
  data, a caller's batches) a fingerprint of the first training and validation batches."""
  if batches.identity is not None:
    return dict(batches.identity)
  field = "data.corpus" if not cfg.data.path else "data.path"
  return {"field": field, "source": batches.description,
          "sha256": workdir_lib.tree_digest(batches.train(0), batches.valid(0))}


def _run(cfg, workdir, model, tx, mesh, shardings, state, checkpointer, metrics, start,
         stop_after, progress, batches, hooks, writer):
  """The steps of ``train_and_evaluate`` on the engine's loop (inside ``jax.set_mesh``)."""
  position = cfg.model.position
  train_step = make_train_step(
      model, tx, cfg.train.seed, dropout=cfg.model.dropout > 0,
      random_positions_max=position.random_max_len if position.randomize else 0,
      redraw_features=KINDS.get(cfg.model.attention.kind).redraws(cfg.model.attention),
      state_sharding=shardings)
  eval_step = make_eval_step(model)
  schedule = learning_rate_schedule(cfg.train)
  t = cfg.train
  tokens_per_step = t.batch_size * cfg.data.seq_len
  if progress:
    print(f"{workdir}: {num_params(state['params']):,} parameters; data {batches.description}")
  put = lambda batch: parallel.put_batch(batch, mesh)  # noqa: E731

  def evaluate(state, done):
    valid = validation_loss(eval_step, state["params"], batches, cfg, mesh)
    return [{"step": done, "split": "valid", "loss": valid,
             "bpb": valid / (LN2 * batches.bytes_per_token),
             "ppl": evaluation.perplexity(valid)}]

  def log_fields(done, step_metrics, count, elapsed):
    return {"lr": float(schedule(done - 1)), "grad_norm": float(step_metrics["grad_norm"]),
            "ms_per_step": 1000 * elapsed / count,
            "tokens_per_s": tokens_per_step * count / elapsed}

  end = t.steps if stop_after is None else min(t.steps, stop_after)
  return loop.run_steps(
      state=state, step_fn=lambda state, step: train_step(state, *put(batches.train(step))),
      start=start, end=end,
      schedule=loop.Schedule(t.steps, t.log_every, t.eval_every, t.checkpoint_every),
      checkpointer=checkpointer, metrics=metrics,
      probe=lambda params: eval_step(params, *put(batches.valid(0))), evaluate=evaluate,
      hooks=hooks, log_fields=log_fields, write=writer, desc=workdir.name, progress=progress)
