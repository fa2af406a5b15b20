"""One command that checks an accelerator: kernel tests compiled, kernel speed beside
cuDNN/XLA/tokamax, decode speed, and 50 training steps with the fused kernel against XLA.

  python scripts/gpu_check.py --out DIR              # on a GPU (or TPU): about 8 minutes
  python scripts/gpu_check.py --out DIR --dry-run    # on CPU, interpret mode, tiny sizes

Parts, each with its own time budget (seconds; what did not fit is recorded as skipped):

  kernel_tests  pytest, compiled on the device, over the kernel test files of each impl:
                pallas (flash forward/backward over every pattern, the zoo of score
                modifiers with leaf gradients, GQA/MQA, ragged lengths, f32/bf16/f16, the
                decode kernel, cached decoding, training steps), cudnn, tokamax and auto.
                Counts per impl.
  bench         scripts/bench_kernels.py over N = 1k, 4k, 16k; head dim 64 and 128; causal
                and not; bf16; forward and forward+backward; attnlab's kernel beside
                jax.nn (cuDNN, XLA), JAX's bundled Pallas kernel and each tokamax
                implementation, plus the block-sparse speed-ups.
  decode        scripts/bench_decode.py's measurement (N = 1k, 4k, 16k; 4 and 1 KV heads)
                with impl=pallas and impl=xla: ms/token and the cache bytes read per second.
  training      50 AdamW steps of a small LM with impl=pallas and with impl=xla from the
                same initialisation and batches; the largest loss difference.

Writes ``DIR/gpu_check.json`` (everything; ``tests/test_auto.py`` reads its
``parts.kernel_tests.by_impl``: an implementation's ``tested_on`` may name the backend
only when a committed check shows its kernel tests passing there) and ``DIR/gpu_check.md`` (the tables), beside the benchmarks' own files, and
prints a one-screen summary. Needs no network: on a machine without the ``[gpu]``/
``[test]`` extras, install their wheels first (docs/kernels.md, "Checking a GPU").
A dry run is part of the test suite (tests/test_gpu_check.py), so the script cannot rot.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import pathlib
import platform
import re
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]

KERNEL_TESTS = {      # impl -> its test files
    "pallas": ["tests/test_pallas.py", "tests/test_pallas_score_mods.py",
               "tests/test_pallas_decode.py",
               "tests/test_kv_cache_pallas.py", "tests/test_pallas_model.py"],
    "cudnn": ["tests/test_cudnn.py"],
    "tokamax": ["tests/test_tokamax.py"],
    "auto": ["tests/test_auto.py"],
}
# the dry run: one cheap test per impl, interpreted on CPU
DRY_TESTS = {
    "pallas": ["tests/test_pallas.py::test_row_that_sees_nothing_is_zero_without_nan"],
    "cudnn": ["tests/test_cudnn.py::test_patterns_map_to_cudnns_causal_and_window_arguments"],
    "tokamax": ["tests/test_tokamax.py::test_without_tokamax_it_names_the_extra"],
    "auto": ["tests/test_auto.py::test_declarations_rank_on_known_backends"],
}
BUDGETS = {"kernel_tests": 240.0, "bench": 120.0, "decode": 45.0, "training": 60.0}
_RESULT = re.compile(r"^(tests/\S+?\.py)::(\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


# ----------------------------------------------------------------------------- the parts

def kernel_tests(out: pathlib.Path, dry_run: bool, budget: float, backend: str) -> dict:
  """pytest over each impl's kernel tests (slow ones included), compiled on the device."""
  selection = DRY_TESTS if dry_run else KERNEL_TESTS
  owner = {path.split("::")[0]: impl for impl, paths in selection.items() for path in paths}
  env = dict(os.environ, JAX_PLATFORMS={"gpu": "cuda", "tpu": "tpu"}.get(backend, "cpu"),
             PYTHONUNBUFFERED="1")
  command = [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-m",
             "slow or not slow", "-o", "addopts=", *[p for ps in selection.values() for p in ps]]
  started = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=budget)
    text, status = done.stdout + done.stderr, "ran"
  except subprocess.TimeoutExpired as e:
    text = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    status = f"stopped at the {budget:.0f} s budget"
  (out / "kernel_tests.log").write_text(text)
  by_impl = {impl: {"passed": 0, "failed": 0, "skipped": 0} for impl in selection}
  failures = []
  for line in text.splitlines():
    match = _RESULT.match(line)
    if match:
      path, name, outcome = match.groups()
      kind = {"PASSED": "passed", "XPASS": "passed", "SKIPPED": "skipped",
              "XFAIL": "skipped"}.get(outcome, "failed")
      by_impl[owner.get(path, "auto")][kind] += 1
      if kind == "failed":
        failures.append(f"{path}::{name}")
  return {"status": status, "seconds": time.perf_counter() - started, "by_impl": by_impl,
          "failures": failures, "command": " ".join(command[1:]), "log": "kernel_tests.log"}


def _script(name: str):
  spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def _lm_configs():
  """configs/lm.py, loaded by its path (the configs are files, not a package)."""
  from attnlab import config_lib
  return config_lib.load_module(ROOT / "configs" / "lm.py")


def bench(out: pathlib.Path, dry_run: bool, budget: float) -> dict:
  """scripts/bench_kernels.py on the fixed grid (tiny and interpreted in a dry run)."""
  if dry_run:
    args = ["--lengths=32", "--head_dims=16", "--causal=true", "--heads=2",
            "--batch_tokens=1", "--dtype=float32", "--repeats=1", "--block=16", "--window=16",
            "--bigbird_block=16", "--impls=attnlab_pallas,xla,tokamax_xla,pallas_sliding_window"]
  else:
    args = ["--lengths=1024,4096,16384", "--head_dims=64,128", "--causal=true,false",
            "--dtype=bfloat16", "--repeats=5", "--max_seconds=10"]
  args += [f"--budget_s={budget}", f"--out={out / 'bench_kernels'}"]
  started = time.perf_counter()
  with contextlib.redirect_stdout(io.StringIO()):
    result = _script("bench_kernels").main(args)
  rows = result["rows"]
  return {"status": "ran", "seconds": time.perf_counter() - started,
          "command": "scripts/bench_kernels.py " + " ".join(args), "check": result["check"],
          "rows": rows, "skipped": sum(r["status"].startswith("skipped") for r in rows),
          "errors": sorted({f"{r['impl']}: {r['status']}" for r in rows
                            if r["status"] != "ok" and not r["status"].startswith("skipped")})}


def decode(dry_run: bool, budget: float) -> dict:
  """scripts/bench_decode.py's measurement with the fused decode kernel and with XLA."""
  lm = _lm_configs()
  bench_decode = _script("bench_decode")
  cfg = lm.get_config("rope")
  if dry_run:
    cfg.model.update(num_layers=1, d_model=32, d_ff=64)
    cfg.model.attention.num_heads = 2
    jobs, steps, repeats = [(24, 1)], 4, 1
  else:
    jobs, steps, repeats = [(n, h) for h in (4, 1) for n in (1024, 4096, 16384)], 64, 3
  started, runs = time.perf_counter(), {}
  for impl in ("pallas", "xla"):
    cfg.model.attention.impl = impl
    rows, status = [], "ran"
    for context, kv_heads in jobs:
      if time.perf_counter() - started > budget:
        status = f"stopped at the {budget:.0f} s budget"
        break
      try:
        r = bench_decode.measure(cfg, context, kv_heads, steps=steps, repeats=repeats)
      except Exception as e:  # noqa: BLE001 - reported
        status = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        break
      # each decode step reads the whole cache at least once
      r["cache_gb_per_s"] = r["cache_bytes"] / (r["cached_ms_per_token"] / 1e3) / 1e9
      rows.append(r)
    runs[impl] = {"status": status, "rows": rows}
  return {"status": "ran", "seconds": time.perf_counter() - started, "runs": runs,
          "command": "scripts/bench_decode.py measure() per (context, kv_heads), "
                     f"{steps} steps, median of {repeats}"}


def training(dry_run: bool, budget: float) -> dict:
  """``steps`` AdamW steps with impl=pallas and impl=xla from one init and one batch stream."""
  import numpy as np
  lm = _lm_configs()
  from attnlab import config_lib, data
  from attnlab.engine.training import init_state, make_optimizer, make_train_step
  from attnlab.models import build_lm

  steps = 3 if dry_run else 50
  cfg = lm.get_config("alibi")
  cfg.data.corpus = "tinyshakespeare"     # shipped: the same text on every machine
  if dry_run:
    cfg.model.update(num_layers=1, d_model=32, d_ff=64)
    cfg.model.attention.update(num_heads=2, num_kv_heads=2)
    cfg.data.seq_len, cfg.train.batch_size = 32, 2
  else:
    cfg.model.update(num_layers=4, d_model=256, d_ff=1024)
    cfg.model.attention.update(num_heads=4, num_kv_heads=4)
    cfg.data.seq_len, cfg.train.batch_size = 512, 16
  cfg.train.steps = steps
  started, losses = time.perf_counter(), {}
  for impl in ("pallas", "xla"):
    if time.perf_counter() - started > budget:
      losses[impl] = None
      continue
    run = cfg.copy_and_resolve_references()
    run.model.attention.impl = impl
    run = config_lib.resolve(run)
    model, tx = build_lm(run.model), make_optimizer(run.train, run.model)
    state = init_state(model, tx, run)
    step = make_train_step(model, tx, run.train.seed, dropout=False)
    batches = data.make_batches(run)
    curve = []
    for i in range(steps):
      state, metrics = step(state, *batches.train(i))
      curve.append(float(metrics["loss"]))
    losses[impl] = curve
  ran = all(v is not None for v in losses.values())
  diff = (float(np.max(np.abs(np.subtract(losses["pallas"], losses["xla"])))) if ran else None)
  return {"status": "ran" if ran else f"stopped at the {budget:.0f} s budget",
          "seconds": time.perf_counter() - started, "steps": steps,
          "model": dict(layers=cfg.model.num_layers, d_model=cfg.model.d_model,
                        heads=cfg.model.attention.num_heads, seq_len=cfg.data.seq_len,
                        batch=cfg.train.batch_size, position="alibi", dtype=cfg.model.dtype),
          "losses": losses, "max_abs_loss_difference": diff,
          "agree": bool(ran and diff is not None and diff < 2e-2 * abs(losses["xla"][0]))}


# ----------------------------------------------------------------------------- the report

def environment() -> dict:
  import jax
  versions = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "tokamax", "flax", "optax"):
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  driver = None
  with contextlib.suppress(Exception):
    driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                            capture_output=True, text=True, timeout=20).stdout.strip() or None
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device": device.device_kind,
          "device_count": jax.device_count(), "driver": driver, "versions": versions}


def markdown(report: dict) -> str:
  env, parts = report["environment"], report["parts"]
  lines = [f"# GPU check{' (dry run on CPU: interpret mode, tiny sizes)' if report['dry_run'] else ''}",
           "", f"`{report['command']}`", "",
           f"Device: {env['device']} ×{env['device_count']} ({env['backend']}), driver "
           f"{env['driver']}; " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
           "", "## Kernel tests (compiled)" if not report["dry_run"] else "## Kernel tests",
           "", f"Status: {parts['kernel_tests']['status']}, "
           f"{parts['kernel_tests']['seconds']:.0f} s", "",
           "| impl | passed | failed | skipped |", "|---|---|---|---|"]
  for impl, c in parts["kernel_tests"]["by_impl"].items():
    lines.append(f"| {impl} | {c['passed']} | {c['failed']} | {c['skipped']} |")
  lines += [f"- failed: `{f}`" for f in parts["kernel_tests"]["failures"]]
  b = parts["bench"]
  lines += ["", "## Kernel speed", "", f"`{b['command']}` ({b['status']}, {b['seconds']:.0f} s, "
            f"{b['skipped']} rows skipped); the tables: bench_kernels.md", ""]
  lines += [f"- {e}" for e in b.get("errors", [])]
  lines += ["", "## Decode", "", "| impl | context | kv_heads | ms/token | cache GB/s | "
            "greedy agrees |", "|---|---|---|---|---|---|"]
  for impl, run in parts["decode"]["runs"].items():
    for r in run.get("rows", []):
      lines.append(f"| {impl} | {r['context']} | {r['num_kv_heads']} | "
                   f"{r['cached_ms_per_token']:.3f} | {r['cache_gb_per_s']:.1f} | "
                   f"{'yes' if r['greedy_tokens_agree'] else 'NO'} |")
    if run["status"] != "ran":
      lines.append(f"| {impl} | {run['status']} | | | | |")
  t = parts["training"]
  lines += ["", "## Training", "", f"{t['steps']} steps, {t['model']}: {t['status']}; largest "
            f"|loss(pallas) − loss(xla)| = {t['max_abs_loss_difference']}; agree: {t['agree']}"]
  if t["status"] == "ran":
    lines += [f"- first/last loss, pallas: {t['losses']['pallas'][0]:.4f} / "
              f"{t['losses']['pallas'][-1]:.4f}; xla: {t['losses']['xla'][0]:.4f} / "
              f"{t['losses']['xla'][-1]:.4f}"]
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", required=True, help="directory for the JSON and Markdown")
  parser.add_argument("--dry-run", action="store_true",
                      help="CPU, interpret mode, tiny sizes: checks the script, not a device")
  parser.add_argument("--parts", default="kernel_tests,bench,decode,training")
  args = parser.parse_args(argv)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  from attnlab import runtime
  runtime.configure()
  import jax
  backend = jax.default_backend()
  if backend == "cpu" and not args.dry_run:
    parser.error("no GPU or TPU here (JAX's backend is 'cpu'); use --dry-run to check the "
                 "script on CPU")
  budgets = dict(BUDGETS) if not args.dry_run else {k: 300.0 for k in BUDGETS}
  wanted = args.parts.split(",")
  started = time.perf_counter()
  parts = {"kernel_tests": {"status": "skipped", "seconds": 0.0, "by_impl": {}, "failures": []},
           "bench": {"status": "skipped", "seconds": 0.0, "command": "", "skipped": 0},
           "decode": {"status": "skipped", "seconds": 0.0, "runs": {}},
           "training": {"status": "skipped", "seconds": 0.0, "steps": 0, "model": {},
                        "max_abs_loss_difference": None, "agree": False}}
  for name in wanted:
    print(f"gpu_check: {name} (budget {budgets[name]:.0f} s)", flush=True)
    try:
      if name == "kernel_tests":
        parts[name] = kernel_tests(out, args.dry_run, budgets[name], backend)
      elif name == "bench":
        parts[name] = bench(out, args.dry_run, budgets[name])
      elif name == "decode":
        parts[name] = decode(args.dry_run, budgets[name])
      elif name == "training":
        parts[name] = training(args.dry_run, budgets[name])
    except Exception as e:  # noqa: BLE001 - one broken part must not lose the others
      parts[name]["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
  report = {"dry_run": args.dry_run, "backend": backend, "environment": environment(),
            "command": "python scripts/gpu_check.py " + " ".join(argv or sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "seconds": time.perf_counter() - started,
            "parts": parts}
  (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
  text = markdown(report)
  (out / "gpu_check.md").write_text(text)
  print(text)
  return report


if __name__ == "__main__":
  main()
