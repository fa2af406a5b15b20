"""Attention kernels in TFLOP/s: attnlab's fused Pallas kernel against cuDNN, XLA and
JAX's bundled Pallas attention, plus block-sparse speed-ups over dense and the cost of
score modifiers in the fused kernel (built-in ALiBi, the same ALiBi as a user-written
``ScoreMod``, KERPLE, T5; all through the kernel's general modifier path).

  python scripts/bench_kernels.py                          # defaults for the backend present
  python scripts/bench_kernels.py --lengths=1024,4096 --head_dims=128 --causal=true
  python scripts/bench_kernels.py --impls=attnlab_pallas,pallas_alibi,pallas_custom_alibi,pallas_kerple,pallas_t5 --causal=true --out=docs/bench_score_mods

It runs on whatever backend JAX finds. On GPU/TPU the kernels are compiled; on
CPU Pallas kernels only *interpret* (a correctness mode, orders of magnitude
slower than a compiled kernel), so CPU rows are labelled ``interpret`` and
measure the interpreter, not the kernel design. Defaults: GPU/TPU N = 1k..16k,
16 heads, batch 16k tokens / N; CPU N = 256, 512, 1024, 2 heads, batch 1.

FLOPs (FlashAttention's convention): forward 4·B·H·N²·D, halved when causal;
backward 2.5× forward, so forward+backward is 3.5× forward. Each cell is the
median of ``--repeats`` timed runs after one compiling run. Before timing, each
implementation's forward output at the smallest N is compared with XLA's
(``max_err`` column), so a fast wrong kernel cannot hide in the table.

Writes ``<out>.md``, ``<out>.json`` and ``<out>.png`` (TFLOP/s against N).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import platform
import statistics
import sys
import time
from typing import Callable

from attnlab import runtime
from attnlab.provenance import provenance

runtime.configure()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from attnlab import positional  # noqa: E402
from attnlab.attention import dot_product_attention, masks  # noqa: E402
from attnlab.attention.pytree import pytree_dataclass  # noqa: E402
from attnlab.attention.score_mods import AdditiveBias, T5Bias  # noqa: E402
from attnlab.positional.kerple import KerpleLogBias  # noqa: E402

DTYPES = {"bfloat16": jnp.bfloat16, "float16": jnp.float16, "float32": jnp.float32}


def attention_flops(batch: int, heads: int, n: int, head_dim: int, causal: bool,
                    backward: bool) -> float:
  """FlashAttention's count: 4·B·H·N²·D forward (half if causal); x3.5 with backward."""
  fwd = 4.0 * batch * heads * n * n * head_dim * (0.5 if causal else 1.0)
  return fwd * (3.5 if backward else 1.0)


# ----------------------------------------------------------------------------- implementations

def _pallas(block: int, make_mask=None, make_mod=None):
  def fn(q, k, v, causal):
    mask = make_mask(q.shape[1]) if make_mask else (masks.causal() if causal else None)
    bias = make_mod(q.shape[2]) if make_mod else None
    return dot_product_attention(q, k, v, mask=mask, bias=bias, impl="pallas", block_q=block,
                                 block_kv=block)
  return fn


@pytree_dataclass(data=("slopes",))
class CustomAlibi(AdditiveBias):
  """ALiBi as a researcher would write it: a class the kernel has never seen."""
  slopes: jax.Array

  def bias(self, q_idx, kv_idx):
    return -self.slopes[:, None, None] * jnp.abs(q_idx - kv_idx).astype(jnp.float32)

  def select_heads(self, first, count):
    return CustomAlibi(jax.lax.dynamic_slice_in_dim(self.slopes, first, count))


# score modifiers in the fused kernel, all through its general path (issue 18): the
# built-in ALiBi, the same formula as a user-written class, a learned KERPLE and T5
MODIFIERS = {
    "pallas_alibi": lambda heads: positional.alibi_bias(heads),
    "pallas_custom_alibi": lambda heads: CustomAlibi(positional.alibi_slopes(heads)),
    "pallas_kerple": lambda heads: KerpleLogBias(r1=jnp.full((heads,), 1.0),
                                                 r2=jnp.full((heads,), 0.5)),
    "pallas_t5": lambda heads: T5Bias(table=0.1 * jnp.arange(32.0 * heads).reshape(32, heads)
                                      / heads, bidirectional=False, num_buckets=32,
                                      max_distance=128),
}


def _jax_nn(implementation: str):
  def fn(q, k, v, causal):
    return jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=implementation)
  return fn


def _jax_bundled_pallas(interpret: bool):
  """JAX's own Pallas flash attention: the GPU (Triton) kernel, or TPU's."""
  backend = jax.default_backend()
  if backend == "tpu":
    from jax.experimental.pallas.ops.tpu import flash_attention as tpu_flash

    def fn(q, k, v, causal):
      out = tpu_flash.flash_attention(*(x.transpose(0, 2, 1, 3) for x in (q, k, v)),
                                      causal=causal, sm_scale=1.0 / math.sqrt(q.shape[-1]))
      return out.transpose(0, 2, 1, 3)
    return fn
  from jax.experimental.pallas.ops.gpu import attention as gpu_attention

  def fn(q, k, v, causal):
    return gpu_attention.mha(q, k, v, None, sm_scale=1.0 / math.sqrt(q.shape[-1]),
                             causal=causal, interpret=interpret)
  return fn


def _tokamax(implementation: str):
  def fn(q, k, v, causal):
    return dot_product_attention(q, k, v, mask=masks.causal() if causal else None,
                                 impl="tokamax", tokamax_implementation=implementation)
  return fn


def implementations(block: int, window: int, bigbird_block: int) -> dict[str, Callable]:
  interpret = jax.default_backend() not in ("gpu", "tpu")
  impls = {
      "attnlab_pallas": _pallas(block),
      "xla": _jax_nn("xla"),
      "cudnn": _jax_nn("cudnn"),
      "jax_pallas": _jax_bundled_pallas(interpret),
      # tokamax (the optional [gpu] extra), each implementation it has; one that cannot run
      # here reports its error in the table
      **{f"tokamax_{name}": _tokamax(name)
         for name in ("mosaic", "triton", "cudnn", "xla", "xla_chunked")},
      # block-sparse variants of attnlab's kernel (causal), compared with its dense causal row
      "pallas_sliding_window": _pallas(block, lambda n: masks.sliding_window(window)),
      "pallas_bigbird": _pallas(block, lambda n: masks.bigbird(
          bigbird_block, window_blocks=3, global_blocks=1, random_blocks=1, causal=True)),
      **{name: _pallas(block, make_mod=make_mod) for name, make_mod in MODIFIERS.items()},
  }
  return impls


SPARSE = ("pallas_sliding_window", "pallas_bigbird")


# ----------------------------------------------------------------------------- measuring

def _inputs(batch, n, heads, head_dim, dtype, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  shape = (batch, n, heads, head_dim)
  return [jax.random.normal(k_, shape, jnp.float32).astype(dtype) for k_ in keys]


def _program(fn, causal, backward):
  if not backward:
    return jax.jit(lambda q, k, v, g: fn(q, k, v, causal))

  def loss(q, k, v, g):
    return jnp.sum(fn(q, k, v, causal).astype(jnp.float32) * g.astype(jnp.float32))
  return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def time_program(program, args, repeats: int) -> float:
  """Median seconds of ``repeats`` runs after one compiling run."""
  jax.block_until_ready(program(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(program(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _short(error: Exception) -> str:
  text = f"{type(error).__name__}: {error}".splitlines()[0]
  return text[:120]


def check_outputs(impls, *, n, heads, head_dim, dtype, causal) -> dict[str, str | float]:
  """Max |out - xla out| per implementation at one size (dense ones only; a modifier row
  against XLA with the same modifier as a dense bias), or an error."""
  q, k, v, _ = _inputs(1, n, heads, head_dim, dtype, seed=1)
  plain = np.asarray(_jax_nn("xla")(q, k, v, causal).astype(jnp.float32))
  errors = {}
  for name, fn in impls.items():
    if name in SPARSE:
      continue
    expected = plain
    if name in MODIFIERS:
      expected = np.asarray(dot_product_attention(
          q, k, v, mask=masks.causal() if causal else None, bias=MODIFIERS[name](heads),
          impl="xla").astype(jnp.float32))
    try:
      got = np.asarray(jax.jit(lambda q, k, v: fn(q, k, v, causal))(q, k, v).astype(jnp.float32))
      errors[name] = float(np.abs(got - expected).max())
    except Exception as e:  # noqa: BLE001 - reported in the table
      errors[name] = _short(e)
  return errors


def measure(impls, *, lengths, head_dims, causals, batch_tokens, heads, dtype, repeats,
            max_seconds, progress=True, budget_s=None):
  """One row per (impl, head_dim, causal, N, mode) with seconds, TFLOP/s or a status; past
  ``budget_s`` seconds the remaining rows are recorded as skipped."""
  from tqdm import tqdm
  rows = []
  combos = [(name, d, c, n) for d in head_dims for c in causals for name in impls
            for n in lengths if c or name not in SPARSE]
  bar = tqdm(combos, desc="kernels", disable=not progress)
  slow: set[tuple] = set()
  started = time.perf_counter()
  for name, d, causal, n in bar:
    batch = max(1, batch_tokens // n)
    args = _inputs(batch, n, heads, d, dtype)
    for backward in (False, True):
      row = dict(impl=name, head_dim=d, causal=causal, n=n, batch=batch, heads=heads,
                 mode="fwd+bwd" if backward else "fwd", seconds=None, tflops=None, status="ok")
      key = (name, d, causal, backward)
      if budget_s is not None and time.perf_counter() - started > budget_s:
        row["status"] = f"skipped: over the {budget_s:.0f} s budget"
      elif key in slow:
        row["status"] = f"skipped: a shorter N took over {max_seconds:.0f} s"
      else:
        try:
          seconds = time_program(_program(impls[name], causal, backward), args, repeats)
          row["seconds"] = seconds
          row["tflops"] = attention_flops(batch, heads, n, d, causal, backward) / seconds / 1e12
          if seconds > max_seconds:
            slow.add(key)
        except Exception as e:  # noqa: BLE001 - unsupported configurations are reported
          row["status"] = _short(e)
      rows.append(row)
      bar.set_postfix(impl=name, n=n, d=d)
  return rows


# ----------------------------------------------------------------------------- reporting

def _cell(row) -> str:
  if row is None:
    return ""
  if row["tflops"] is None:
    return row["status"]
  if row["tflops"] < 0.1:
    return f"{row['seconds'] * 1e3:.1f} ms"
  return f"{row['tflops']:.1f}"


def _seconds(rows, impl, head_dim, causal, n, mode):
  """The measured seconds of one cell, or None."""
  hits = [r for r in rows if r["impl"] == impl and r["head_dim"] == head_dim
          and r["causal"] == causal and r["n"] == n and r["mode"] == mode and r["seconds"]]
  return hits[0]["seconds"] if hits else None


def markdown(rows, errors, lengths, header: str) -> str:
  lines = [header, ""]
  units = ("TFLOP/s" if jax.default_backend() in ("gpu", "tpu")
           else "ms (interpret mode: TFLOP/s would be meaningless)")
  for (d, causal) in sorted({(r["head_dim"], r["causal"]) for r in rows}):
    lines += [f"### head_dim {d}, {'causal' if causal else 'not causal'}: {units}", "",
              "| impl | mode | " + " | ".join(f"N={n}" for n in lengths) + " |",
              "|---|---|" + "---|" * len(lengths)]
    for name in dict.fromkeys(r["impl"] for r in rows):
      for mode in ("fwd", "fwd+bwd"):
        cells = {r["n"]: r for r in rows if r["impl"] == name and r["head_dim"] == d
                 and r["causal"] == causal and r["mode"] == mode}
        if cells:
          lines.append(f"| {name} | {mode} | "
                       + " | ".join(_cell(cells.get(n)) for n in lengths) + " |")
    lines.append("")
  sparse = [name for name in SPARSE if any(r["impl"] == name for r in rows)]
  if sparse:
    lines += ["### Block-sparse speed-up of attnlab's kernel over its dense causal run "
              "(forward+backward time ratio)", "",
              "| pattern | head_dim | " + " | ".join(f"N={n}" for n in lengths) + " |",
              "|---|---|" + "---|" * len(lengths)]
  for name in sparse:
    for d in sorted({r["head_dim"] for r in rows}):
      cells = []
      for n in lengths:
        dense = _seconds(rows, "attnlab_pallas", d, True, n, "fwd+bwd")
        sparse = _seconds(rows, name, d, True, n, "fwd+bwd")
        cells.append(f"{dense / sparse:.2f}×" if dense and sparse else "")
      if any(cells):
        lines.append(f"| {name.removeprefix('pallas_')} | {d} | " + " | ".join(cells) + " |")
  mods = [name for name in MODIFIERS if any(r["impl"] == name for r in rows)]
  if mods:
    lines += ["", "### Score modifiers in attnlab's kernel: time over the same run without one "
              "(1.00× = free)", "",
              "| modifier | head_dim | causal | mode | " + " | ".join(f"N={n}" for n in lengths)
              + " |", "|---|---|---|---|" + "---|" * len(lengths)]
    for name in mods:
      for (d, causal) in sorted({(r["head_dim"], r["causal"]) for r in rows}):
        for mode in ("fwd", "fwd+bwd"):
          cells = []
          for n in lengths:
            base = _seconds(rows, "attnlab_pallas", d, causal, n, mode)
            modded = _seconds(rows, name, d, causal, n, mode)
            cells.append(f"{modded / base:.2f}×" if base and modded else "")
          if any(cells):
            lines.append(f"| {name.removeprefix('pallas_')} | {d} | {causal} | {mode} | "
                         + " | ".join(cells) + " |")
  lines += ["", "Forward output against XLA's at the smallest N (max |difference|):", "",
            "| impl | max_err |", "|---|---|"]
  lines += [f"| {k} | {v if isinstance(v, str) else f'{v:.2e}'} |" for k, v in errors.items()]
  return "\n".join(lines) + "\n"


def plot(rows, path_png):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  panels = sorted({(r["head_dim"], r["causal"], r["mode"]) for r in rows})
  cols = 2
  fig, axes = plt.subplots(-(-len(panels) // cols), cols, figsize=(11, 3.6 * -(-len(panels) // cols)),
                           squeeze=False)
  compiled = jax.default_backend() in ("gpu", "tpu")
  for ax, (d, causal, mode) in zip(axes.flat, panels):
    for name in dict.fromkeys(r["impl"] for r in rows):
      pts = [(r["n"], r["tflops"] if compiled else r["seconds"]) for r in rows
             if r["impl"] == name and r["head_dim"] == d and r["causal"] == causal
             and r["mode"] == mode and r["seconds"]]
      if pts:
        ax.plot(*zip(*pts), marker="o", label=name)
    ax.set_xscale("log", base=2)
    if not compiled:
      ax.set_yscale("log")
    ax.set_title(f"D={d}, {'causal' if causal else 'full'}, {mode}")
    ax.set_xlabel("N")
    ax.set_ylabel("TFLOP/s" if compiled else "seconds (interpret)")
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(panels):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path_png, dpi=110)
  plt.close(fig)


def _bools(text):
  return [{"true": True, "false": False}[t.strip().lower()] for t in text.split(",")]


def main(argv=None):
  accelerated = jax.default_backend() in ("gpu", "tpu")
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--lengths", default="1024,2048,4096,8192,16384" if accelerated else "256,512,1024")
  parser.add_argument("--head_dims", default="64,128" if accelerated else "64")
  parser.add_argument("--causal", default="true,false")
  parser.add_argument("--impls", default="all", help="comma list of " + ", ".join(
      implementations(128, 256, 128)))
  parser.add_argument("--heads", type=int, default=16 if accelerated else 2)
  parser.add_argument("--batch_tokens", type=int, default=16384 if accelerated else 1,
                      help="batch = max(1, batch_tokens // N)")
  parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
  parser.add_argument("--block", type=int, default=128)
  parser.add_argument("--window", type=int, default=256)
  parser.add_argument("--bigbird_block", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=5 if accelerated else 3)
  parser.add_argument("--max_seconds", type=float, default=30.0)
  parser.add_argument("--budget_s", type=float, default=None,
                      help="stop timing after this many seconds; later rows are marked skipped")
  parser.add_argument("--out", default="docs/bench_kernels")
  args = parser.parse_args(argv)

  impls = implementations(args.block, args.window, args.bigbird_block)
  if args.impls != "all":
    wanted = args.impls.split(",")
    unknown = sorted(set(wanted) - set(impls))
    if unknown:
      parser.error(f"--impls: unknown {unknown}; valid: {', '.join(impls)}")
    impls = {k: impls[k] for k in wanted}
  lengths = [int(x) for x in args.lengths.split(",")]
  head_dims = [int(x) for x in args.head_dims.split(",")]
  causals = _bools(args.causal)
  dtype = DTYPES[args.dtype]

  device = jax.devices()[0]
  mode = "compiled" if accelerated else "interpret mode (Pallas on CPU is an interpreter)"
  header = (f"`python scripts/bench_kernels.py {' '.join(argv if argv is not None else sys.argv[1:])}`"
            f"\n\nDevice: {device.device_kind} ({jax.default_backend()}, {mode}), jax "
            f"{jax.__version__}, Python {platform.python_version()}; {args.dtype}, {args.heads} "
            f"heads, batch = max(1, {args.batch_tokens} // N), Pallas tiles {args.block}, "
            f"median of {args.repeats}. FLOPs: 4·B·H·N²·D forward, half if causal, ×3.5 with "
            f"backward. Sliding window {args.window}; BigBird blocks of {args.bigbird_block} "
            f"(window 3, global 1, random 1), both causal.")
  errors = check_outputs(impls, n=lengths[0], heads=args.heads, head_dim=head_dims[0],
                         dtype=dtype, causal=causals[0])
  rows = measure(impls, lengths=lengths, head_dims=head_dims, causals=causals,
                 batch_tokens=args.batch_tokens, heads=args.heads, dtype=dtype,
                 repeats=args.repeats, max_seconds=args.max_seconds, budget_s=args.budget_s)
  out = pathlib.Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  text = markdown(rows, errors, lengths, header)
  out.with_suffix(".md").write_text(text)
  out.with_suffix(".json").write_text(json.dumps(
      dict(provenance=provenance(), device=device.device_kind, backend=jax.default_backend(),
           jax=jax.__version__,
           args=vars(args), check=errors, rows=rows), indent=1))
  plot(rows, out.with_suffix(".png"))
  print(text)
  print(f"wrote {out.with_suffix('.md')}, .json, .png")
  return dict(check=errors, rows=rows)


if __name__ == "__main__":
  main()
