"""Train sequence-to-sequence models on algorithmic tasks and score them by input length
(the engine behind ``python -m attnlab.tasks_train`` and the sweep runner ``tasks``).

One run:

  python -m attnlab.tasks_train --config=configs/seq2seq.py:gru_bahdanau --workdir=runs/rev

trains on inputs of length ``data.min_length..data.max_length`` (teacher forcing,
cross-entropy on every output token and ``<eos>``), then decodes greedily
``eval.examples`` fresh test examples at each of ``eval.lengths`` and reports

- sequence accuracy: the whole output, ``<eos>`` included, is exactly right;
- token accuracy: the fraction of output positions (``<eos>`` included) right.

A grid of runs (tasks x variants) goes through the sweep runner with
``sweep.runner = "tasks"`` (``configs/length_generalization.py``,
``configs/bottleneck.py``): ``python -m attnlab.sweep --config=... --workdir=...``.

The workdir has the layout of every run (``attnlab.workdir``: ``config.json``,
``checkpoints/``, ``metrics.jsonl``; resumable, a finished run is not retrained), plus
``train.json`` and ``eval.json`` (fingerprinted: reused only for the same model).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from attnlab import config_lib, positional
from attnlab import workdir as workdir_lib
from attnlab.attention import KINDS
from attnlab.data import tasks
from attnlab.engine import loop, studies
from attnlab.engine.training import make_optimizer
from attnlab.models import ARCHS, MODEL_FIELDS, build_seq2seq
from attnlab.models import rnn as rnn_lib
from attnlab.registry import ConfigError, Field
from attnlab.runtime import compiled_cache

# ----------------------------------------------------------------------------- config


def _positive_int(value, field, low=1):
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    raise ConfigError(f"{field}={value!r} must be an integer >= {low}")


def _choice(value, field, valid):
  valid = list(valid)
  if value not in valid:
    raise ConfigError(f"{field}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


# eval.* of the task trainer: every default is here and only here.
TASK_EVAL_FIELDS = (
    Field("lengths", (5, 10, 20, 40, 80), "input lengths scored after training"),
    Field("examples", 128, "examples per length", minimum=1),
    Field("batch_size", 128, "examples per evaluation batch", minimum=1),
)


def default_config() -> ml_collections.ConfigDict:
  """A task-trainer config with every declared field at its declared default: the model
  (a Transformer's fields, attention and position blocks, and the RNNs' ``model.rnn``),
  ``data`` (``TASK_DATA_FIELDS``), ``train`` (the trainers' shared fields) and ``eval``
  (``TASK_EVAL_FIELDS``). ``configs/seq2seq.py`` states what its presets change."""
  def block(fields):
    return ml_collections.ConfigDict({f.name: f.default for f in fields})
  c = ml_collections.ConfigDict()
  c.model = block(MODEL_FIELDS)
  c.model.attention = config_lib.attention_block()
  c.model.position = config_lib.position_block()
  c.model.rnn = block(rnn_lib.RNN_FIELDS)
  c.data = block(tasks.TASK_DATA_FIELDS)
  c.train = block(config_lib.TRAIN_FIELDS)
  c.eval = block(TASK_EVAL_FIELDS)
  return c


def widths(cfg) -> tuple[int, int]:
  """(longest source, longest decoder sequence) the run trains or evaluates on."""
  d, task = cfg.data, cfg.data.task
  longest = max([d.max_length, *cfg.eval.lengths])
  return longest, tasks.target_width(task, longest)


def resolve(config) -> ml_collections.FrozenConfigDict:
  """Validated config with derived defaults (vocabulary, learned table size), frozen."""
  config = config_lib.with_declared_defaults(config)
  if config.model.vocab_size == 0:
    config.model.vocab_size = len(tasks.VOCAB)
  validate(config)
  p = config.model.position
  positional.POSITIONS.get(p.kind).resolve(p, max(widths(config)))
  return ml_collections.FrozenConfigDict(config)


def validate(config) -> None:
  """Raise ``ConfigError`` naming the field, the value and what is valid; nothing compiles.
  A Transformer's ``model`` block gets the language models' own checks
  (``config_lib.check_model``)."""
  m, d, t, e = config.model, config.data, config.train, config.eval
  _choice(m.arch, "model.arch", ARCHS.names())
  config_lib.check_fields(d, tasks.TASK_DATA_FIELDS, "data")
  spec = tasks.TASKS.get(d.task)
  _positive_int(d.max_length, f"data.max_length (task {d.task!r})", max(spec.min_length, d.min_length))
  if not isinstance(e.lengths, (tuple, list)) or not e.lengths:
    raise ConfigError(f"eval.lengths={e.lengths!r} must be a non-empty tuple of integers")
  for n in e.lengths:
    _positive_int(n, f"eval.lengths entry (task {d.task!r})", spec.min_length)
  config_lib.check_fields(e, TASK_EVAL_FIELDS, "eval")
  _positive_int(m.vocab_size, "model.vocab_size", len(tasks.VOCAB))
  if m.arch == "rnn":
    config_lib.check_fields(m.rnn, rnn_lib.RNN_FIELDS, "model.rnn")
  else:
    longest = max(widths(config))
    p = ml_collections.ConfigDict(m.position.to_dict())   # resolved copy: derived sizes filled in
    config_lib.check_fields(p, (config_lib.POSITION_KIND,), "model.position")
    if p.kind in positional.POSITIONS:
      scheme = positional.POSITIONS.get(p.kind)
      scheme.resolve(p, longest)
      limit = scheme(p).max_length()
      if limit is not None and limit < longest:
        raise ConfigError(f"model.position.max_len={limit} is shorter than the longest sequence "
                          f"({longest}, from data.max_length / eval.lengths); valid: >= "
                          f"{longest}, or 0 to size it automatically")
    config_lib.check_model(
        m, position=p, seq_len=longest,
        trained_length=max(d.max_length, tasks.target_width(d.task, d.max_length)))
    kind = KINDS.get(m.attention.kind)
    if not kind.uses_impl:
      valid = [n for n, k in KINDS.items() if k.uses_impl]
      raise ConfigError(f"model.attention.kind={m.attention.kind!r} cannot mask the source's "
                        f"padding, which the encoder-decoder needs; valid: {', '.join(valid)}")
  config_lib.check_optimizer(t)
  config_lib.check_fields(t, config_lib.TRAIN_FIELDS, "train")


# ----------------------------------------------------------------------------- training


def sequence_loss(logits, targets):
  """Mean cross-entropy over non-pad targets. logits [B, T, V]; targets int [B, T]."""
  weights = (targets != tasks.PAD).astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  return (losses * weights).sum() / jnp.maximum(weights.sum(), 1.0)


def make_train_step(model, tx, cfg):
  """Jitted ``(state, batch) -> (state, loss)``. With randomized positional encodings the
  source and target positions are each a sorted random subset of [0, random_max_len),
  drawn from (seed, step)."""
  p = cfg.model.position
  randomize = cfg.model.arch == "transformer" and p.randomize

  def step_fn(state, batch):
    src, tgt_in, tgt_out = batch["src"], batch["tgt_in"], batch["tgt_out"]
    src_pos = tgt_pos = None
    if randomize:
      key = jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), state["step"])
      src_pos = jnp.broadcast_to(positional.randomized_positions(
          jax.random.fold_in(key, 1), src.shape[1], p.random_max_len), src.shape)
      tgt_pos = jnp.broadcast_to(positional.randomized_positions(
          jax.random.fold_in(key, 2), tgt_in.shape[1], p.random_max_len), tgt_in.shape)

    def loss_fn(params):
      return sequence_loss(model.apply({"params": params}, src, tgt_in, src_pos, tgt_pos), tgt_out)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    return {"step": state["step"] + 1, "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state}, loss

  return jax.jit(step_fn, donate_argnums=(0,))


def train(config, workdir, progress: bool = True, restart: bool = False,
          accept_data_change: bool = False):
  """Train (or resume, or reload a finished run with the same config) on the engine's loop.

  The workdir has the layout of every run (``attnlab.workdir``): ``config.json``,
  ``checkpoints/``, ``metrics.jsonl``, and ``train.json`` (parameter count, seconds, final
  loss) once training is complete. Returns (cfg, params).
  """
  cfg = resolve(config)
  workdir = pathlib.Path(workdir)
  model = build_seq2seq(cfg.model)
  d, t = cfg.data, cfg.train
  batch = lambda step: tasks.train_batch(d.task, t.batch_size, d.max_length, t.seed, step,  # noqa: E731
                                         d.min_length)
  tx = make_optimizer(t, cfg.model if cfg.model.arch == "transformer" else None)

  def init():
    batch0 = batch(0)
    params = jax.jit(model.init)(jax.random.PRNGKey(t.seed), batch0["src"],
                                 batch0["tgt_in"])["params"]
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  loop.prepare_workdir(workdir)
  with workdir_lib.lock(workdir):
    checkpointer = workdir_lib.Checkpointer(workdir / "checkpoints", t.keep_checkpoints)
    metrics = None
    try:
      workdir_lib.write_or_check_config(cfg, workdir)
      start, state = loop.restore_or_init(checkpointer, jax.eval_shape(init), None, init)
      workdir_lib.refuse_silent_restart(workdir, start, restart)
      workdir_lib.check_data(workdir, {"field": "data.task", "source": f"task {d.task} (generated)",
                                       "sha256": workdir_lib.tree_digest(batch(0))},
                             start, accept_data_change)
      metrics = workdir_lib.MetricsLog(workdir, start, tensorboard=False)
      workdir_lib.record_start(workdir, start)
      train_step = make_train_step(model, tx, cfg)
      fixed = batch(0)
      probe = jax.jit(lambda params: sequence_loss(
          model.apply({"params": params}, fixed["src"], fixed["tgt_in"]), fixed["tgt_out"]))
      began = time.perf_counter()
      state, last = loop.run_steps(
          state=state, step_fn=lambda state, step: _as_metrics(train_step(state, batch(step))),
          start=start, end=t.steps,
          schedule=loop.Schedule(t.steps, t.log_every, t.steps, t.checkpoint_every),
          checkpointer=checkpointer, metrics=metrics, probe=probe,
          desc=f"{workdir.parent.name}/{workdir.name}", progress=progress)
    except BaseException as e:         # closing must not hide the error that stopped the run
      workdir_lib.close_all(checkpointer, metrics, failing=e)
      raise
    workdir_lib.close_all(checkpointer, metrics)
    if start < t.steps or not (workdir / "train.json").exists():
      n_params = sum(x.size for x in jax.tree_util.tree_leaves(state["params"]))
      final = [r for r in workdir_lib.read_metrics(workdir) if r["split"] == "train"][-1]
      workdir_lib.atomic_write(workdir / "train.json", json.dumps(
          {"params": n_params, "steps": t.steps, "seconds": time.perf_counter() - began,
           "resumed_from": start, "final_loss": final["loss"]}, indent=2))
  return cfg, state["params"]


def _as_metrics(result):
  state, loss = result
  return state, {"loss": loss}


# ----------------------------------------------------------------------------- evaluation


def make_generate(model):
  """Jitted greedy decoding ``(params, src, steps) -> int32 [batch, steps]``."""
  return jax.jit(lambda params, src, steps: model.apply({"params": params}, src, steps,
                                                          method=model.generate),
                 static_argnums=(2,))


@compiled_cache(maxsize=8)
def _cached_generate(model_cfg):
  """One compiled decoder per model config (re-evaluations reuse it)."""
  return make_generate(build_seq2seq(model_cfg))


def score(predictions, targets) -> tuple[np.ndarray, np.ndarray]:
  """(sequence correct [batch], token accuracy [batch]) over non-pad target positions.

  predictions, targets: int [batch, T] (targets end with ``<eos>`` then ``<pad>``).
  """
  predictions, targets = np.asarray(predictions), np.asarray(targets)
  valid = targets != tasks.PAD
  hits = (predictions == targets) & valid
  return np.all(hits | ~valid, axis=1), hits.sum(1) / valid.sum(1)


def evaluate(cfg, params, lengths=None, examples=None, seed: int = 1234) -> list[dict]:
  """Greedy-decode test examples at each input length; one record per length.

  Every length is padded to the longest source and decoded for the longest target, so one
  compiled decoder serves all lengths (source padding is masked, decoding is causal, and
  positions past a target's ``<eos>`` are not scored: the results are those of decoding
  each length alone).
  """
  generate = _cached_generate(cfg.model)
  lengths = cfg.eval.lengths if lengths is None else lengths
  examples = cfg.eval.examples if examples is None else examples
  batches = {n: tasks.eval_batch(cfg.data.task, n, examples, seed) for n in lengths}
  src_width = max(lengths)
  steps = max(b["tgt_out"].shape[1] for b in batches.values())
  records = []
  for length, batch in batches.items():
    src = np.pad(batch["src"], ((0, 0), (0, src_width - batch["src"].shape[1])))
    tgt = np.pad(batch["tgt_out"], ((0, 0), (0, steps - batch["tgt_out"].shape[1])))
    seq, tok = [], []
    for i in range(0, examples, cfg.eval.batch_size):
      s, a = score(generate(params, src[i:i + cfg.eval.batch_size], steps),
                   tgt[i:i + cfg.eval.batch_size])
      seq.append(s)
      tok.append(a)
    records.append({"task": cfg.data.task, "eval_length": int(length),
                    "seq_acc": float(np.mean(np.concatenate(seq))),
                    "token_acc": float(np.mean(np.concatenate(tok))), "examples": examples,
                    "train_max_length": cfg.data.max_length})
  return records


def train_and_evaluate(config, workdir, progress: bool = True, restart: bool = False,
                       accept_data_change: bool = False) -> list[dict]:
  """Train (or reuse) and evaluate one run. The evaluation is cached in ``eval.json`` with
  the fingerprint of what produced it (config, checkpoint, evaluation data); it is reused
  only when that is unchanged, otherwise recomputed (and the reason printed)."""
  cfg, params = train(config, workdir, progress, restart, accept_data_change)
  workdir = pathlib.Path(workdir)
  cache = workdir / "eval.json"
  spec = {"lengths": list(cfg.eval.lengths), "examples": cfg.eval.examples, "seed": 1234}
  step = int(cfg.train.steps)
  stamp = workdir_lib.fingerprint(cfg, step, params, data=json.dumps(
      {"task": cfg.data.task, **spec}, sort_keys=True))
  if cache.exists():
    cached = json.loads(cache.read_text())
    why = workdir_lib.fingerprint_change(cached.get("fingerprint"), stamp)
    if cached.get("spec") == spec and not why:
      return cached["records"]
    if progress:
      print(f"{workdir}: evaluating again ({why or 'another evaluation spec'})")
  records = evaluate(cfg, params)
  info = json.loads((workdir / "train.json").read_text())
  for r in records:
    r.update(params=info["params"], train_seconds=info["seconds"], final_loss=info["final_loss"])
  workdir_lib.atomic_write(cache, json.dumps(
      {"spec": spec, "fingerprint": stamp, "records": records}, indent=2))
  return records


# ----------------------------------------------------------------------------- sweeps


def variant_configs(config) -> dict[tuple[str, str], ml_collections.ConfigDict]:
  """{(task, variant): config} for ``sweep.tasks`` x ``sweep.variants``, all validated first."""
  if not config.sweep.get("tasks"):
    raise ConfigError("sweep.tasks is empty: name at least one task; valid: "
                      + ", ".join(tasks.TASKS.names()))
  if not config.sweep.variants:
    raise ConfigError("sweep.variants is empty: name at least one variant and its overrides")
  base = ml_collections.ConfigDict(config.to_dict())
  del base["sweep"]
  out = {}
  for task in config.sweep.tasks:
    _choice(task, "sweep.tasks entry", tasks.TASKS.names())
    for name, overrides in config.sweep.variants.items():
      config_lib.check_plain_name(name, "sweep.variants")   # it names a directory
      cfg = ml_collections.ConfigDict(base.to_dict())
      cfg.data.task = task
      config_lib.merge_overrides(cfg, overrides, f"sweep.variants.{name}")
      try:
        resolve(cfg)
      except ConfigError as e:
        raise ConfigError(f"sweep.variants.{name} (task {task!r}): {e}") from None
      out[(task, name)] = cfg
  return out


def results_markdown(records: list[dict]) -> str:
  """A table per task: rows are variants, columns input lengths, cells sequence accuracy
  (token accuracy); lengths beyond training are marked with ``*``."""
  out = []
  for task in dict.fromkeys(r["task"] for r in records):
    rs = [r for r in records if r["task"] == task]
    lengths = sorted({r["eval_length"] for r in rs})
    train_max = rs[0]["train_max_length"]
    seeds = max(r.get("seeds", 1) for r in rs)
    out.append(f"**{task}** (level {tasks.TASKS.get(task).level}; trained on lengths "
               f"<= {train_max}; * = longer than training): sequence accuracy (token accuracy)"
               + (f", mean ± sd over {seeds} seeds" if seeds > 1 else "") + "\n")
    out.append("| variant | params | train s | " + " | ".join(
        f"n={n}{'*' if n > train_max else ''}" for n in lengths) + " |")
    out.append("|---|---|---|" + "---|" * len(lengths))
    for name in dict.fromkeys(r["variant"] for r in rs):
      row = {r["eval_length"]: r for r in rs if r["variant"] == name}
      first = next(iter(row.values()))
      cells = [f"{studies.spread(row[n], 'seq_acc')} ({row[n]['token_acc']:.2f})" if n in row
               else "—" for n in lengths]
      out.append(f"| {name} | {first['params']:,} | {first['train_seconds']:.0f} | "
                 + " | ".join(cells) + " |")
    out.append("")
  return "\n".join(out)


def plot_results(records: list[dict], path, metric: str = "seq_acc") -> None:
  """A panel per task: accuracy against input length, a line per variant."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  task_names = list(dict.fromkeys(r["task"] for r in records))
  cols = min(3, len(task_names))
  rows = -(-len(task_names) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
  for ax, task in zip(axes.flat, task_names):
    rs = [r for r in records if r["task"] == task]
    for name in dict.fromkeys(r["variant"] for r in rs):
      pts = sorted((r["eval_length"], r[metric]) for r in rs if r["variant"] == name)
      ax.plot(*zip(*pts), marker="o", label=name)
    ax.axvline(rs[0]["train_max_length"], color="gray", linestyle=":", label="longest training")
    ax.set_xscale("log", base=2)
    lengths = sorted({r["eval_length"] for r in rs})
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("input length")
    ax.set_ylabel("sequence accuracy" if metric == "seq_acc" else "token accuracy")
    ax.set_title(f"{task} ({tasks.TASKS.get(task).level})")
    ax.grid(True, alpha=0.3)
  for ax in list(axes.flat)[len(task_names):]:
    ax.axis("off")
  handles, labels = axes.flat[0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 5), fontsize=8)
  fig.tight_layout(rect=(0, 0.07 if len(labels) <= 5 else 0.12, 1, 1))
  fig.savefig(path, dpi=120)
  plt.close(fig)


def run_task_sweep(config, workdir, progress: bool = True, **train_options) -> list[dict]:
  """The ``tasks`` runner, one seed: train and evaluate every (task, variant) in
  ``workdir/<task>/<variant>``; returns the records."""
  workdir = pathlib.Path(workdir)
  runs = variant_configs(config)                # everything validated before any training
  records = []
  start = time.perf_counter()
  for (task, name), cfg in runs.items():
    for r in train_and_evaluate(cfg, workdir / task / name, progress, **train_options):
      records.append(dict(r, variant=name))
  if progress:
    print(f"{workdir}: {len(runs)} runs done in {time.perf_counter() - start:.0f} s")
  return records


def _plots(results: dict, path) -> None:
  plot_results(results["summary"], path("results.png"), "seq_acc")
  plot_results(results["summary"], path("results_token.png"), "token_acc")


studies.STUDIES.register("tasks")(studies.Study(
    run=run_task_sweep, keys=("task", "variant", "eval_length"),
    metrics=("seq_acc", "token_acc", "train_seconds", "final_loss"),
    markdown=lambda results: results_markdown(results["summary"]), plots=_plots))
