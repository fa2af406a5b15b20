"""Train several presets of one config file and compare them across evaluation lengths.

  python -m attnlab.compare --config=configs/lm.py --presets=rope,alibi --workdir=runs/quickstart

Each preset trains in ``workdir/<preset>`` (resumable: re-running skips finished
training) and is evaluated at ``factors`` x its training length. Writes
``comparison.json``, ``comparison.md`` and ``comparison.png`` into ``workdir``.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import pathlib

from absl import app, flags, logging

from attnlab import evaluate, runtime
from attnlab.registry import ConfigError


def load_config_file(path: str, arg: str):
  """``get_config(arg)`` of a config file (as ``--config=path:arg`` would)."""
  spec = importlib.util.spec_from_file_location("attnlab_user_config", path)
  if spec is None or not pathlib.Path(path).is_file():
    raise ConfigError(f"--config={path!r} is not a readable config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def apply_overrides(config, overrides: list[str]):
  """Apply ``key.path=value`` strings (values parsed as Python literals, else strings)."""
  for item in overrides:
    key, sep, raw = item.partition("=")
    if not sep:
      raise ConfigError(f"--set {item!r} must look like field.path=value")
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node = config
    *parents, leaf = key.split(".")
    for p in parents:
      if p not in node:
        raise ConfigError(f"--set {key}: no field {p!r}; valid: {', '.join(sorted(node.keys()))}")
      node = node[p]
    if leaf not in node:
      raise ConfigError(f"--set {key}: no field {leaf!r}; valid: {', '.join(sorted(node.keys()))}")
    node[leaf] = type(node[leaf])(value) if isinstance(node[leaf], float) else value
  return config


def run_comparison(config_path: str, presets: list[str], workdir, factors=(1, 2, 4, 8),
                   overrides: list[str] = (), progress: bool = True) -> list[dict]:
  from attnlab import config_lib, train
  workdir = pathlib.Path(workdir)
  configs = {p: apply_overrides(load_config_file(config_path, p), list(overrides)) for p in presets}
  for preset, cfg in configs.items():  # validate everything before any training starts
    try:
      config_lib.resolve(cfg)
    except ConfigError as e:
      raise ConfigError(f"preset {preset!r}: {e}") from None
  records = []
  for preset, cfg in configs.items():
    run_dir = workdir / preset
    train.train_and_evaluate(cfg, run_dir, progress=progress)
    lengths = [f * cfg.data.seq_len for f in factors]
    records += evaluate.evaluate_workdir(run_dir, lengths, progress=progress)
  (workdir / "comparison.json").write_text(json.dumps(records, indent=2))
  (workdir / "comparison.md").write_text(evaluate.markdown_table(records))
  train_lengths = {r["train_length"] for r in records}
  evaluate.plot_lengths(records, workdir / "comparison.png",
                        "Length extrapolation: " + " vs ".join(presets),
                        train_length=train_lengths.pop() if len(train_lengths) == 1 else None)
  return records


def define_flags():
  flags.DEFINE_string("config", "configs/lm.py", "Config file with get_config(preset).")
  flags.DEFINE_list("presets", ["rope", "alibi"], "Presets to train and compare.")
  flags.DEFINE_string("workdir", "runs/quickstart", "Output directory.")
  flags.DEFINE_list("factors", ["1", "2", "4", "8"], "Evaluation lengths / training length.")
  flags.DEFINE_multi_string("set", [], "Override for every preset: field.path=value.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint access at INFO
  FLAGS = flags.FLAGS
  try:
    records = run_comparison(FLAGS.config, FLAGS.presets, FLAGS.workdir,
                             [int(f) for f in FLAGS.factors], FLAGS.set)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  print(evaluate.markdown_table(records))
  print(f"wrote {FLAGS.workdir}/comparison.{{json,md,png}}")


if __name__ == "__main__":
  runtime.configure()
  define_flags()
  app.run(main)
