"""scripts/gpu_check.py end to end in its CPU dry run (interpret mode, tiny sizes), so the
unattended GPU command cannot rot: every part runs and reports, the kernel tests it runs
are counted per impl, the fused kernel's numbers agree with XLA's, and a dry run never
counts as a device check."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO


@pytest.fixture(scope="module")
def report(tmp_path_factory):
  spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  out = tmp_path_factory.mktemp("gpu_check")
  module.main(["--out", str(out), "--dry-run"])
  return out, json.loads((out / "gpu_check.json").read_text())


def test_every_part_runs_and_is_reported(report):
  out, r = report
  assert r["dry_run"] is True and r["backend"] == "cpu"
  assert {name: part["status"] for name, part in r["parts"].items()} == dict.fromkeys(
      ("kernel_tests", "bench", "decode", "training"), "ran")
  for name in ("gpu_check.md", "kernel_tests.log", "bench_kernels.md", "bench_kernels.png"):
    assert (out / name).stat().st_size > 0, name
  text = (out / "gpu_check.md").read_text()
  assert "dry run on CPU" in text and "| pallas | 1 | 0 | 0 |" in text


def test_kernel_tests_are_counted_per_impl_from_pytest_itself(report):
  _, r = report
  counts = r["parts"]["kernel_tests"]["by_impl"]
  assert counts == {impl: {"passed": 1, "failed": 0, "skipped": 0}
                    for impl in ("pallas", "cudnn", "tokamax", "auto")}
  log = (report[0] / "kernel_tests.log").read_text()
  assert log.count(" PASSED") == 4 and "4 passed" in log


def test_the_fused_kernel_agrees_with_xla_in_every_part(report):
  _, r = report
  assert r["parts"]["bench"]["check"]["attnlab_pallas"] < 1e-5
  timed = {row["impl"] for row in r["parts"]["bench"]["rows"] if row["seconds"]}
  assert {"attnlab_pallas", "xla", "pallas_sliding_window"} <= timed
  for impl in ("pallas", "xla"):
    rows = r["parts"]["decode"]["runs"][impl]["rows"]
    assert rows and all(row["greedy_tokens_agree"] for row in rows)
  t = r["parts"]["training"]
  assert len(t["losses"]["pallas"]) == len(t["losses"]["xla"]) == 3
  assert t["max_abs_loss_difference"] < 1e-4 and t["agree"]
  # an untrained byte model starts near the uniform loss ln 256 = 5.545
  assert abs(t["losses"]["pallas"][0] - np.log(256)) < 0.3


def test_a_dry_run_never_counts_as_a_device_check(report):
  import test_auto
  _, r = report
  assert not test_auto._passes(r, "gpu", "pallas") and not test_auto._passes(r, "cpu", "pallas")


def test_without_an_accelerator_the_real_mode_says_so_in_one_line(tmp_path):
  done = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path)],
                        cwd=REPO, capture_output=True, text=True,
                        env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  assert done.returncode == 2
  assert "no GPU or TPU here (JAX's backend is 'cpu'); use --dry-run" in done.stderr
  assert "Traceback" not in done.stderr
