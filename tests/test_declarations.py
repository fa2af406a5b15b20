"""One source for every default: the declarations (``registry.Field``s of the registries'
entries and of each config section's owner).

- No library code writes a default of its own: no ``cfg.get("theta", 10000.0)`` for a
  declared field (the source is scanned); readers use the block or ``registry.Declared``.
- ``configs/lm.py`` and ``configs/seq2seq.py`` start from the declarations and state only
  what they change; no config file restates a declared default.
- Every field a config holds is declared by someone.
- A field the run does not read neither blocks its resume nor changes its fingerprint; one
  it reads does both.
"""

from __future__ import annotations

import ast
import json
import pathlib

import pytest

from attnlab import config_lib, data, parallel, positional
from attnlab import workdir as workdir_lib
from attnlab.data import tasks
from attnlab.engine import tasks as tasks_engine
from attnlab.models import MODEL_FIELDS, rnn
from attnlab.registry import ConfigError
from configs import lm, seq2seq

ROOT = pathlib.Path(__file__).resolve().parents[1]
# .get("name", default) calls on things that are not config blocks, with the reason
NOT_CONFIG = {("attnlab/attention/core.py", "sequence"): "the JAX mesh's axis sizes"}


def declared_names() -> set[str]:
  fields = (MODEL_FIELDS + data.DATA_FIELDS + config_lib.TRAIN_FIELDS
            + config_lib.LM_TRAIN_FIELDS + config_lib.EVAL_FIELDS + parallel.MESH_FIELDS
            + rnn.RNN_FIELDS + tasks.TASK_DATA_FIELDS + tasks_engine.TASK_EVAL_FIELDS)
  return ({f.name for f in fields} | set(config_lib.attention_fields())
          | set(config_lib.position_fields()))


def test_no_reader_writes_a_default_of_its_own():
  names = declared_names()
  offenders = []
  for path in sorted((ROOT / "attnlab").rglob("*.py")):
    rel = str(path.relative_to(ROOT))
    for node in ast.walk(ast.parse(path.read_text())):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "get" and len(node.args) == 2
              and isinstance(node.args[0], ast.Constant) and node.args[0].value in names
              and isinstance(node.args[1], ast.Constant)
              and (rel, node.args[0].value) not in NOT_CONFIG):
        offenders.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
  assert not offenders, "defaults written outside the declarations:\n" + "\n".join(offenders)


def _flat(config) -> dict:
  return config_lib.flatten(config_lib.as_plain(config))


def test_presets_are_the_declarations_plus_what_they_change():
  assert _flat(lm.base_config()) == _flat(config_lib.lm_config())
  base = _flat(config_lib.lm_config())
  for preset in lm.PRESETS:
    changed = {k for k, v in _flat(lm.get_config(preset)).items() if base.get(k) != v}
    assert changed <= {"model.position.kind", "data.corpus", "data.seq_len", "train.steps",
                       "train.lr", "train.eval_every", "train.eval_batches",
                       "train.checkpoint_every"} | set(lm.MODERN.get(preset, {})), (preset,
                                                                            changed)
  tasks_base = _flat(tasks_engine.default_config())
  for preset in seq2seq.PRESETS:
    got = _flat(seq2seq.get_config(preset))
    assert set(got) == set(tasks_base), preset      # nothing undeclared, nothing missing


def _assignments(path: pathlib.Path):
  """(line, dotted path after the config variable, literal value) of every assignment of a
  literal to a config field in a config file."""
  for node in ast.walk(ast.parse(path.read_text())):
    if not isinstance(node, ast.Assign) or len(node.targets) != 1:
      continue
    target, parts = node.targets[0], []
    while isinstance(target, ast.Attribute):
      parts.append(target.attr)
      target = target.value
    if not isinstance(target, ast.Name) or len(parts) < 2:
      continue
    try:
      value = ast.literal_eval(node.value)
    except ValueError:
      continue
    yield node.lineno, ".".join(reversed(parts)), value


def _base_of(path: pathlib.Path) -> dict:
  """What a config file starts from: the declarations for the two family configs, else
  the family config's base_config()."""
  if path.name == "lm.py":
    return _flat(config_lib.lm_config())
  if path.name == "seq2seq.py":
    return _flat(tasks_engine.default_config())
  return _flat(seq2seq.base_config() if "seq2seq.py" in path.read_text() else lm.base_config())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_configs_state_only_what_they_change(path):
  base = _base_of(path)
  restated = [f"{path.name}:{line}: {field} = {value!r}" for line, field, value in _assignments(path)
              if field in base and json.loads(json.dumps(value)) == base[field]]
  assert not restated, ("a config states a value it already has from what it builds on:\n"
                        + "\n".join(restated))


def test_every_config_field_is_declared():
  """Study sections (sweep.*, retrieval.*, ...) aside, every field of every preset of every
  config file is declared by an entry or a section's owner."""
  names = declared_names() | {"kind"}
  sections = ("model.", "data.", "train.", "eval.", "mesh.")
  for path in sorted((ROOT / "configs").glob("*.py")):
    if path.name == "__init__.py":
      continue
    module = config_lib.load_module(path)
    for preset in getattr(module, "PRESETS", ("",)):
      for key in _flat(module.get_config(preset)):
        if key.startswith(sections):
          assert key.split(".")[-1] in names, f"{path.name}:{preset}: {key} is not declared"


# ----------------------------------------------------------------------------- used fields


def _run_config(**fields):
  c = lm.get_config("rope")
  c.model.num_layers, c.model.d_model, c.data.seq_len = 1, 32, 16
  for key, value in fields.items():
    node = c
    *parents, leaf = key.split("__")
    for part in parents:
      node = node[part]
    node[leaf] = value
  return config_lib.resolve(c)


@pytest.mark.parametrize("field,value,used", [
    ("model__attention__window", 7, False),            # causal pattern: no window
    ("model__position__yarn_beta", 16.0, False),        # no YaRN scaling
    ("model__position__random_max_len", 4096, False),   # not randomized
    ("model__attention__lsh_buckets", 4, False),        # softmax kind
    ("mesh__data", 1, False),                           # how to run, not what
    ("model__position__theta", 500.0, True),
    ("model__attention__num_kv_heads", 2, True),
    ("train__lr", 1e-3, True),
])
def test_unused_fields_do_not_block_resume_or_change_fingerprints(tmp_path, field, value, used):
  base = _run_config()
  changed = _run_config(**{field: value})
  workdir_lib.write_or_check_config(base, tmp_path, resuming=False)
  same_print = (workdir_lib.fingerprint(base, 1, {})["config_sha256"]
                == workdir_lib.fingerprint(changed, 1, {})["config_sha256"])
  if used:
    with pytest.raises(ConfigError, match=field.replace("__", ".")):
      workdir_lib.write_or_check_config(changed, tmp_path, resuming=True)
    assert not same_print
  else:
    workdir_lib.write_or_check_config(changed, tmp_path, resuming=True)
    assert same_print


def test_a_field_becomes_used_when_its_owner_is_chosen(tmp_path):
  """window is read once the pattern is a sliding window; yarn_beta once scaling is yarn."""
  window = _run_config(model__attention__pattern="sliding_window")
  assert "model.attention.window" in config_lib.run_identity(window)
  assert "model.attention.window" not in config_lib.run_identity(_run_config())
  yarn = _run_config(model__position__scaling="yarn", model__position__scale_factor=2.0)
  assert "model.position.yarn_beta" in config_lib.run_identity(yarn)
  workdir_lib.write_or_check_config(yarn, tmp_path, resuming=False)
  with pytest.raises(ConfigError, match="model.position.yarn_beta"):
    workdir_lib.write_or_check_config(
        _run_config(model__position__scaling="yarn", model__position__scale_factor=2.0,
                    model__position__yarn_beta=16.0), tmp_path, resuming=True)
