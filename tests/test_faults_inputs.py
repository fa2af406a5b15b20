"""Issue 33, points 5, 7 and 8: one error path for every command (a user's or the disk's
error is one line, exit status 2, no traceback, thread tracebacks included), no partial
output files (all or none, an earlier set kept whole), malformed inputs refused in one line
before anything compiles, names from configs that become paths, and evaluation settings
that are not training config.

Disk-full and read-only cases inject the OS error at the write calls (the tests run as
root, where permissions do not bite); the command-line cases run the real entry point in a
subprocess (``_cli``), with the injection set up by a ``-c`` wrapper, because what is
checked is what a user sees: the exact line on stderr and the exit status."""

import errno
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, tiny_config, tiny_sweep_config

from attnlab import config_lib
from attnlab import workdir as workdir_lib
from attnlab.analysis import report
from attnlab.engine import evaluation, hf_import, retrieval_study, sweeps, tasks, training
from attnlab.registry import ConfigError
from configs import seq2seq as seq2seq_configs

HF = REPO / "tests" / "data" / "hf"
ENV = {"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def _cli(module: str, *args: str, inject: str = "") -> subprocess.CompletedProcess:
  """``python -m attnlab.<module> args`` (with ``inject``, Python run first in the process)."""
  if inject:
    cmd = [sys.executable, "-c", f"{inject}\nimport sys\nsys.argv[0] = {module!r}\n"
           f"from attnlab.{module} import run\nrun()", *args]
  else:
    cmd = [sys.executable, "-m", f"attnlab.{module}", *args]
  return subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300, env=ENV)


def _one_line(result: subprocess.CompletedProcess) -> str:
  """The single ``error:`` line of a failed command (exit status 2, no traceback)."""
  err = result.stderr.decode("utf-8", "replace")
  assert result.returncode == 2, err[-3000:]
  assert "Traceback" not in err, err[-3000:]
  lines = [line for line in err.splitlines() if line.strip() and "it/s]" not in line
           and "s/it]" not in line]                  # tqdm's progress bars are not errors
  assert len(lines) == 1 and lines[0].startswith("error: "), err[-3000:]
  return lines[0]


def _snapshot(folder: pathlib.Path) -> dict:
  return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
          if p.is_file()}


def _no_staging_left(folder: pathlib.Path) -> None:
  left = [p for p in folder.parent.rglob("*") if ".staging-" in p.name]
  assert not left, left


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A tiny language-model run with a checkpoint (2 steps)."""
  run = tmp_path_factory.mktemp("trained") / "run"
  training.train_and_evaluate(tiny_config("rope", train__steps=2, train__warmup_steps=1,
                                          train__checkpoint_every=2, train__eval_every=2,
                                          train__log_every=1), run, progress=False)
  return run


# ----------------------------------------------------------------------------- all or nothing


def test_staged_outputs_are_all_or_nothing_and_keep_the_earlier_set(tmp_path, monkeypatch):
  from attnlab import outputs
  out = tmp_path / "out"
  with outputs.staged(out) as stage:
    for name in ("a.json", "b.md", "sub/c.png"):
      stage.write_text(name, f"old {name}")
  before = _snapshot(out)
  assert sorted(before) == ["a.json", "b.md", "sub/c.png"]
  # a write fails half way (the OS names no file, as PIL's does): one line naming the file
  # the block was writing, nothing of the new set in place
  with pytest.raises(workdir_lib.WorkdirError,
                     match=rf"^writing {out}/sub/c.png failed: the disk is full$"):
    with outputs.staged(out) as stage:
      stage.write_text("a.json", "new")
      stage.write_text("b.md", "new")
      stage.path("sub/c.png")
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert _snapshot(out) == before
  _no_staging_left(out)
  # the last rename fails: the files already renamed are put back
  real_replace = os.replace

  def failing_replace(src, dst):
    if str(dst).endswith("c.png"):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", failing_replace)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=rf"^writing {out}/sub/c.png failed: the file system is read-only$"):
    with outputs.staged(out) as stage:
      for name in ("a.json", "b.md", "sub/c.png"):
        stage.write_text(name, "new")
  monkeypatch.undo()
  assert _snapshot(out) == before
  _no_staging_left(out)
  # a failed first write into a new folder leaves no folder
  with pytest.raises(workdir_lib.WorkdirError):
    with outputs.staged(tmp_path / "new") as stage:
      stage.write_text("x", "1")
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
  assert not (tmp_path / "new").exists()
  # and success replaces the whole set
  with outputs.staged(out) as stage:
    for name in ("a.json", "b.md", "sub/c.png"):
      stage.write_text(name, "new")
  assert set(_snapshot(out).values()) == {b"new"}
  _no_staging_left(out)


def test_evaluate_on_a_full_disk_is_one_line_and_keeps_the_earlier_results(trained, tmp_path):
  out = tmp_path / "eval"
  out.mkdir()
  for name in ("eval.json", "eval.md", "eval.png"):
    (out / name).write_text(f"earlier {name}")
  before = _snapshot(out)
  # the PNG is written last; PIL's write on a full disk raises ENOSPC naming no file
  full = ("import errno, os, matplotlib.figure\n"
          "def savefig(self, *a, **k):\n"
          "  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
          "matplotlib.figure.Figure.savefig = savefig")
  result = _cli("evaluate", f"--workdir={trained}", "--lengths=32", f"--out={out}", inject=full)
  assert _one_line(result) == f"error: writing {out}/eval.png failed: the disk is full"
  assert _snapshot(out) == before              # no eval.json / eval.md of the failed run
  _no_staging_left(out)


@pytest.mark.slow
@pytest.mark.parametrize("code,words", [(errno.ENOSPC, "the disk is full"),
                                        (errno.EROFS, "the file system is read-only")])
def test_evaluate_and_analyze_write_all_files_or_none(trained, tmp_path, monkeypatch, code,
                                                      words):
  out = tmp_path / "out"
  evaluation.evaluate_workdir(trained, [32], out, progress=False)
  report.analyze(trained, "hello there", out / "analysis", induction_batch=2, progress=False)
  before = _snapshot(out)
  real = pathlib.Path.write_text

  def failing(self, *args, **kwargs):
    if self.name in ("eval.md", "viewer.html"):
      raise OSError(code, os.strerror(code), str(self))
    return real(self, *args, **kwargs)

  monkeypatch.setattr(pathlib.Path, "write_text", failing)
  with pytest.raises(workdir_lib.WorkdirError, match=rf"^writing {out}/eval.md failed: {words}$"):
    evaluation.evaluate_workdir(trained, [32, 64], out, progress=False)
  with pytest.raises(workdir_lib.WorkdirError,
                     match=rf"^writing {out}/analysis/viewer.html failed: {words}$"):
    report.analyze(trained, "other text", out / "analysis", induction_batch=2, progress=False)
  assert _snapshot(out) == before
  _no_staging_left(out)


def test_a_checkpoint_write_failing_in_orbax_threads_is_one_line_and_leaves_no_workdir(
    tmp_path):
  # orbax writes the checkpoint in threads that log the failure with its traceback (about
  # 200 lines before this was fixed); the import builds its workdir aside
  full = ("import builtins, errno, io, os\n"
          "real = builtins.open\n"
          "def open_(file, mode='r', *a, **k):\n"
          "  if '.orbax-checkpoint-tmp' in str(file) and any(c in mode for c in 'wax'):\n"
          "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))\n"
          "  return real(file, mode, *a, **k)\n"
          "builtins.open = io.open = open_")
  workdir = tmp_path / "imported"
  result = _cli("import_hf", f"--checkpoint={HF / 'gpt2'}", f"--workdir={workdir}",
                f"--config={REPO / 'configs' / 'lm.py'}", inject=full)
  assert _one_line(result) == f"error: writing {workdir} failed: the disk is full"
  assert sorted(p.name for p in tmp_path.iterdir()) == []       # no workdir, nothing aside


def test_tensorstore_errors_that_report_an_os_error_are_one_line():
  from attnlab.cli import common
  tensorstore = ValueError(
      'RESOURCE_EXHAUSTED: Error opening "zarr" driver: Error writing "params.w/.zarray" in '
      'OCDBT database at local file "/runs/a/checkpoints/4.orbax-checkpoint-tmp/default.orbax-'
      'checkpoint-tmp/ocdbt.process_0/": Failed writing: "/runs/a/checkpoints/4.orbax-'
      'checkpoint-tmp/d/30a4": Failed to write 183 bytes to file 4: No space left on device '
      "[os_error_code='28'] [tensorstore_spec='{\"context\":{}}']")
  assert common.user_error(tensorstore) == ("writing the checkpoint /runs/a/checkpoints/4 "
                                            "failed: the disk is full")
  assert common.user_error(RuntimeError("Read-only file system: \"/runs/b/x\"")) == (
      "writing /runs/b/x failed: the file system is read-only")
  assert common.user_error(IsADirectoryError(errno.EISDIR, "Is a directory", "/runs/c")) == (
      "accessing /runs/c failed: Is a directory")
  # a bug is not a user error: it keeps its traceback
  assert common.user_error(TypeError("unsupported operand")) is None
  assert common.user_error(RuntimeError("Event loop is closed")) is None


@pytest.mark.slow
def test_a_real_full_disk_is_one_line(trained, tmp_path):
  """On a 1 MiB tmpfs (where this process may mount one): the real ENOSPC of PIL, orbax and
  tensorstore, not an injected one."""
  disk = tmp_path / "disk"
  disk.mkdir()
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                           capture_output=True)
  if mounted.returncode:
    pytest.skip("cannot mount a tmpfs here")
  try:
    (disk / "fill").write_bytes(b"\0" * (1024 * 1024 - 20 * 1024))  # ~20 KiB left
    result = _cli("evaluate", f"--workdir={trained}", "--lengths=32", f"--out={disk / 'eval'}")
    assert _one_line(result).endswith("failed: the disk is full")
    assert not (disk / "eval").exists()
    result = _cli("import_hf", f"--checkpoint={HF / 'gpt2'}", f"--workdir={disk / 'w'}",
                  f"--config={REPO / 'configs' / 'lm.py'}")
    assert _one_line(result).endswith("failed: the disk is full")
    assert sorted(p.name for p in disk.iterdir()) == ["fill"]
  finally:
    subprocess.run(["umount", str(disk)], check=True)


# ----------------------------------------------------------------------------- malformed inputs


@pytest.mark.parametrize("module,args,line", [
    ("train", ["--config=/nonexistent/lm.py", "--workdir=/tmp/unused"],
     "error: --config='/nonexistent/lm.py': cannot load the config file: no such file"),
    ("sweep", ["--config=/nonexistent/sweep.py:rope", "--workdir=/tmp/unused"],
     "error: --config='/nonexistent/sweep.py:rope': cannot load the config file: no such file"),
])
def test_a_missing_config_file_is_one_line(module, args, line):
  assert _one_line(_cli(module, *args)) == line


def test_out_naming_a_file_is_one_line_before_anything_runs(trained, tmp_path):
  afile = tmp_path / "afile"
  afile.write_text("mine")
  assert _one_line(_cli("evaluate", f"--workdir={trained}", "--lengths=32", f"--out={afile}")) \
      == (f"error: --out={str(afile)!r} is a file; it must be a directory (created if missing) "
          f"for the output files")
  assert afile.read_text() == "mine"
  with pytest.raises(ConfigError, match=rf"--out='{afile}/sub' lies under '{afile}', which is a "
                                        rf"file"):
    report.analyze(trained, "hello", afile / "sub")


def test_non_utf8_text_flags_are_one_line(tmp_path):
  result = _cli("generate", f"--workdir={tmp_path}", "--prompt=hi", b"--stop=\xff".decode(
      "utf-8", "surrogateescape"))
  assert _one_line(result) == ("error: --stop=b'\\xff' is not valid UTF-8; give UTF-8 text "
                               "(for --stop one character, or an escape such as '\\n')")


@pytest.mark.parametrize("flag,value", [("induction_batch", 0), ("induction_batch", -3),
                                        ("sink_k", 0), ("seed", -1)])
def test_analyze_refuses_non_positive_counts_before_reading_the_run(trained, tmp_path, flag,
                                                                     value):
  with pytest.raises(ConfigError, match=rf"^--{flag}={value} must be an integer >= "):
    report.analyze(trained, "hello", tmp_path / "out", **{flag: value})
  assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field,value,match", [
    ("trials", 0, r"^retrieval.trials=0 must be an integer >= 1"),
    ("trials", -2, r"^retrieval.trials=-2 must be an integer >= 1"),
    ("depths", (), r"^retrieval.depths=\(\) must be a non-empty list of numbers in \[0, 1\]"),
    ("depths", (0.5, 1.5), r"^retrieval.depths=\(0.5, 1.5\) must be a non-empty list"),
])
def test_retrieval_settings_are_checked_before_training(tmp_path, field, value, match):
  config = config_lib.load_config_file(str(REPO / "configs" / "retrieval.py"))
  config.retrieval[field] = value
  with pytest.raises(ConfigError, match=match):
    retrieval_study.run_study(config, tmp_path / "study", progress=False)
  assert not (tmp_path / "study").exists()


def _hf_copy(family: str, tmp_path, edit) -> pathlib.Path:
  src = pathlib.Path(shutil.copytree(HF / family, tmp_path / family))
  hf = json.loads((src / "config.json").read_text())
  (src / "config.json").write_text(json.dumps(edit(hf)))
  return src


def _base():
  c = config_lib.load_module(REPO / "configs" / "lm.py").base_config()
  c.data.corpus = "tinyshakespeare"
  return c


@pytest.mark.parametrize("family,edit,match", [
    ("llama", lambda hf: [], r"config.json: the top level is list \[\]; valid: a JSON object"),
    ("llama", lambda hf: {**hf, "num_attention_heads": 0},
     r"num_attention_heads=0 is not valid; valid: an integer >= 1"),
    ("gpt2", lambda hf: {**hf, "n_embd": "32"}, r"n_embd='32' is not valid; valid: an integer >= 1"),
    ("bloom", lambda hf: {**hf, "n_head": 0}, r"n_head=0 is not valid; valid: an integer >= 1"),
    ("gpt_neox", lambda hf: {**hf, "num_attention_heads": None},     # present but null
     r"config.json of GPT-NeoX lacks 'num_attention_heads'"),
    ("llama", lambda hf: {**hf, "num_key_value_heads": 1.5},
     r"num_key_value_heads=1.5 is not valid; valid: an integer >= 1"),
    ("llama", lambda hf: {**hf, "rope_scaling": "linear"},
     r"rope_scaling='linear' is not valid; valid: an object"),
    ("llama", lambda hf: {**hf, "architectures": "LlamaForCausalLM"},
     r"architectures='LlamaForCausalLM' is not valid; valid: a list of class names"),
])
def test_a_malformed_hugging_face_config_is_named(tmp_path, family, edit, match):
  src = _hf_copy(family, tmp_path, edit)
  with pytest.raises(hf_import.HFImportError, match=match):
    hf_import.import_checkpoint(src, tmp_path / "w", _base())
  assert not (tmp_path / "w").exists()


def test_a_malformed_hugging_face_config_is_one_line_on_the_command_line(tmp_path):
  src = _hf_copy("gpt2", tmp_path, lambda hf: {**hf, "n_head": 0})
  result = _cli("import_hf", f"--checkpoint={src}", f"--workdir={tmp_path / 'w'}",
                f"--config={REPO / 'configs' / 'lm.py'}")
  assert _one_line(result) == ("error: config.json of GPT-2: n_head=0 is not valid; valid: an "
                               "integer >= 1")
  assert not (tmp_path / "w").exists()


# ----------------------------------------------------------------------------- paths from configs


@pytest.mark.parametrize("name", ["/tmp/elsewhere", "a/b", "/", "", "sp ace", "up\\x"])
def test_a_sweep_variant_name_must_be_a_plain_name(name):
  message = rf"^sweep\.variants: {re.escape(repr(name))} cannot name a directory; valid: a plain"
  lm = tiny_sweep_config()
  lm.sweep.variants = {name: {"model": {"position": {"kind": "rope"}}}}
  with pytest.raises(ConfigError, match=message):
    sweeps.variant_configs(lm)
  task = config_lib.load_config_file(str(REPO / "configs" / "length_generalization.py"))
  task.sweep.variants = {name: {}}
  with pytest.raises(ConfigError, match=message):
    tasks.variant_configs(task)


def test_plain_variant_names_are_accepted_and_dots_cannot_leave_the_sweep():
  lm = tiny_sweep_config()
  lm.sweep.variants = {"Rope-2_v1": {"model": {"position": {"kind": "rope"}}}}
  assert list(sweeps.variant_configs(lm)) == ["Rope-2_v1"]
  config_lib.check_plain_name("v1.5", "sweep.variants")
  # a ConfigDict refuses dotted keys, but a name may come from elsewhere
  for name in (".", "..", "../up", ".hidden", None, 3):
    with pytest.raises(ConfigError, match=r"^sweep\.variants: .* cannot name a directory"):
      config_lib.check_plain_name(name, "sweep.variants")


def _sharded_llama(tmp_path, shard_name: str) -> pathlib.Path:
  from safetensors.numpy import load_file, save_file
  src = pathlib.Path(shutil.copytree(HF / "llama", tmp_path / "ckpt"))
  tensors = load_file(src / "model.safetensors")
  names = sorted(tensors)
  (src / "model.safetensors").unlink()
  shard = (src / shard_name).resolve()
  shard.parent.mkdir(parents=True, exist_ok=True)
  save_file({k: tensors[k] for k in names[1:]}, shard)
  save_file({names[0]: tensors[names[0]]}, src / "first.safetensors")
  (src / "model.safetensors.index.json").write_text(json.dumps(
      {"weight_map": {names[0]: "first.safetensors", **{k: shard_name for k in names[1:]}}}))
  return src


@pytest.mark.parametrize("shard", ["../outside/w.safetensors", "ABSOLUTE", "sub/../../x.safetensors"])
def test_a_shard_outside_the_checkpoint_folder_is_refused(tmp_path, shard):
  if shard == "ABSOLUTE":
    shard = str(tmp_path / "outside" / "abs.safetensors")
  src = _sharded_llama(tmp_path, shard)
  with pytest.raises(hf_import.HFImportError,
                     match=rf"index.json: shard {shard!r} is not inside the checkpoint folder"):
    hf_import.import_checkpoint(src, tmp_path / "w", _base())
  assert not (tmp_path / "w").exists()


def test_every_shard_read_is_hashed(tmp_path):
  src = _sharded_llama(tmp_path, "shards/rest.safetensors")      # inside, in a subfolder
  record = hf_import.import_checkpoint(src, tmp_path / "w", _base())
  assert set(record["files"]) >= {"shards/rest.safetensors", "first.safetensors",
                                  "model.safetensors.index.json", "config.json", "tokenizer.json"}
  assert record["files"]["shards/rest.safetensors"] == hf_import._sha256(
      src / "shards" / "rest.safetensors")
  assert json.loads((tmp_path / "w" / "import.json").read_text()) == record


# ----------------------------------------------------------------------------- evaluation settings


def test_evaluation_blocks_are_not_part_of_the_run_identity():
  base = config_lib.resolve(tiny_config())
  other = config_lib.with_declared_defaults(base)
  other.eval.max_tokens, other.eval.batch_tokens = 123, 456
  assert config_lib.run_identity(other) == config_lib.run_identity(base)
  retrieval = config_lib.load_config_file(str(REPO / "configs" / "retrieval.py"))
  a = sweeps.variant_configs(retrieval)["rope"]
  retrieval.retrieval.trials, retrieval.retrieval.depths = 7, (0.5,)
  b = sweeps.variant_configs(retrieval)["rope"]
  assert a.retrieval.trials != b.retrieval.trials
  assert config_lib.run_identity(config_lib.resolve(a)) == config_lib.run_identity(
      config_lib.resolve(b))
  # a training field still counts
  other.train.lr = 1e-4
  assert config_lib.run_identity(other) != config_lib.run_identity(base)


def test_what_eval_lengths_decide_about_a_task_model_still_counts():
  """The task trainer sizes a learned position table from eval.lengths: the resolved model
  block carries it, so a longer evaluation is a different model there, and nothing for a
  scheme without a table."""
  def resolved(kind, lengths):
    c = seq2seq_configs.get_config("transformer")
    c.data.task, c.data.max_length = "reverse", 5
    c.model.position.kind = kind
    c.eval.lengths = lengths
    return config_lib.run_identity(tasks.resolve(c))

  learned_short, learned_long = resolved("learned", (5, 10)), resolved("learned", (5, 40))
  assert {k for k in learned_long if learned_long[k] != learned_short.get(k)} == {
      "model.position.max_len"}
  assert resolved("rope", (5, 10)) == resolved("rope", (5, 40))


def _task_config(examples: int):
  c = seq2seq_configs.get_config("gru_luong")
  c.data.task, c.data.max_length = "reverse", 5
  c.model.rnn.hidden, c.model.rnn.attention_dim, c.model.rnn.embed_dim = 16, 16, 8
  c.train.steps, c.train.warmup_steps, c.train.log_every, c.train.checkpoint_every = 4, 1, 2, 2
  c.eval.lengths, c.eval.examples, c.eval.batch_size = (5,), examples, 8
  return c


def test_new_evaluation_settings_re_evaluate_a_task_run_without_retraining(tmp_path):
  run = tmp_path / "run"
  first = tasks.train_and_evaluate(_task_config(8), run, progress=False)
  trained = (run / "train.json").read_bytes(), _snapshot(run / "checkpoints")
  second = tasks.train_and_evaluate(_task_config(16), run, progress=False)
  assert [r["examples"] for r in first] == [8] and [r["examples"] for r in second] == [16]
  assert json.loads((run / "eval.json").read_text())["spec"]["examples"] == 16
  assert ((run / "train.json").read_bytes(), _snapshot(run / "checkpoints")) == trained


def test_new_evaluation_settings_re_evaluate_a_finished_sweep_without_retraining(tmp_path):
  config = tiny_sweep_config()
  config.sweep.protocols = ("non_overlapping",)
  config.sweep.factors = (1, 2)
  config.sweep.variants = {"v": {"model": {"position": {"kind": "rope"}}}}
  first = sweeps.run_sweep(config, tmp_path, progress=False)
  trained = _snapshot(tmp_path / "v" / "checkpoints"), (tmp_path / "v" / "metrics.jsonl").read_bytes()
  config.eval.max_tokens = 128                   # was 256
  config.eval.batch_tokens = 64
  config.sweep.factors = (1, 2, 4)
  second = sweeps.run_sweep(config, tmp_path, progress=False)
  assert [r["eval_length"] for r in second] == [16, 32, 64]
  assert [r["tokens"] for r in first] == [256, 256]
  assert [r["tokens"] for r in second] == [128, 128, 128]
  cache = json.loads((tmp_path / "v" / "sweep_eval.json").read_text())
  assert cache["spec"]["max_tokens"] == 128 and cache["spec"]["lengths"] == [16, 32, 64]
  assert (_snapshot(tmp_path / "v" / "checkpoints"),
          (tmp_path / "v" / "metrics.jsonl").read_bytes()) == trained
  assert len(json.loads((tmp_path / "results.json").read_text())) == 3
