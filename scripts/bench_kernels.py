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
import math
import pathlib
import platform
import tempfile
import sys
import time
from typing import Callable

from attnlab import benchtime, runtime
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


def baseline_of(name: str) -> tuple[str, str] | None:
  """What ``name`` is compared with, and how: ``(baseline, "speedup")`` (the baseline's time
  over ``name``'s) or ``(baseline, "cost")`` (``name``'s time over the baseline's); None for
  XLA itself. Block-sparse rows and score modifiers against attnlab's dense kernel (same
  tiles, same run), every other implementation against XLA."""
  if name in SPARSE:
    return "attnlab_pallas", "speedup"
  if name in MODIFIERS:
    return "attnlab_pallas", "cost"
  return None if name == "xla" else ("xla", "speedup")


def measure(impls, *, lengths, head_dims, causals, batch_tokens, heads, dtype, repeats,
            max_seconds, progress=True, budget_s=None):
  """One row per (impl, head_dim, causal, N, mode) with seconds (the median), TFLOP/s, the
  timed rounds (``times``: ``benchtime.spread``) or a status; past ``budget_s`` seconds the
  remaining rows are recorded as skipped.

  Per (head_dim, causal, N) every implementation's forward and forward+backward program is
  compiled and run once untimed, then ``repeats`` rounds each time every program once,
  the baselines (``xla``, ``attnlab_pallas``) first (``benchtime.alternate``): an
  implementation and its baseline alternate, and ``ratios`` divides times of one round.
  """
  from tqdm import tqdm
  rows = []
  groups = [(d, c, n) for d in head_dims for c in causals for n in lengths]
  bar = tqdm(groups, desc="kernels", disable=not progress)
  slow: set[tuple] = set()
  started = time.perf_counter()
  first = [name for name in ("xla", "attnlab_pallas") if name in impls]
  order = first + [name for name in impls if name not in first]
  for d, causal, n in bar:
    bar.set_postfix(d=d, causal=causal, n=n)
    batch = max(1, batch_tokens // n)
    args = _inputs(batch, n, heads, d, dtype)
    group, programs = {}, {}
    for name in order:
      if not causal and name in SPARSE:
        continue
      for backward in (False, True):
        row = dict(impl=name, head_dim=d, causal=causal, n=n, batch=batch, heads=heads,
                   mode="fwd+bwd" if backward else "fwd", seconds=None, tflops=None,
                   status="ok")
        group[(name, row["mode"])] = row
        key = (name, d, causal, backward)
        if budget_s is not None and time.perf_counter() - started > budget_s:
          row["status"] = f"skipped: over the {budget_s:.0f} s budget"
        elif key in slow:
          row["status"] = f"skipped: a shorter N took over {max_seconds:.0f} s"
        else:
          try:
            program = _program(impls[name], causal, backward)
            jax.block_until_ready(program(*args))           # compile and warm up, untimed
            programs[(name, row["mode"])] = (lambda program=program:
                                             jax.block_until_ready(program(*args)))
          except Exception as e:  # noqa: BLE001 - unsupported configurations are reported
            row["status"] = _short(e)
    times = benchtime.alternate(programs, repeats, warmup=0) if programs else {}
    for (name, mode), seconds in times.items():
      row = group[(name, mode)]
      row["times"] = benchtime.spread(seconds)
      row["seconds"] = row["times"]["median_s"]
      row["tflops"] = (attention_flops(batch, heads, n, d, causal, mode == "fwd+bwd")
                       / row["seconds"] / 1e12)
      if row["seconds"] > max_seconds:
        slow.add((name, d, causal, mode == "fwd+bwd"))
    rows += [group[(name, mode)] for name in impls for mode in ("fwd", "fwd+bwd")
             if (name, mode) in group]
  return rows


def ratios(rows) -> list[dict]:
  """Every implementation against its baseline (``baseline_of``) at every (head_dim,
  causal, N, mode) both timed: ``benchtime.comparison`` rows (both sides' rounds, the ratio
  of medians and the range of per-round ratios) with ``impl``, ``baseline``, ``kind``
  (speedup / cost), ``head_dim``, ``causal``, ``n`` and ``mode``."""
  timed = {(r["impl"], r["head_dim"], r["causal"], r["n"], r["mode"]): r for r in rows
           if r.get("times")}
  out = []
  for (name, d, causal, n, mode), r in timed.items():
    against = baseline_of(name)
    base = timed.get((against[0], d, causal, n, mode)) if against else None
    if base is None:
      continue
    baseline, kind = against
    sides = [(baseline, base["times"]["times_s"]), (name, r["times"]["times_s"])]
    if kind == "cost":
      sides.reverse()
    out.append(benchtime.comparison(*sides, impl=name, baseline=baseline, kind=kind,
                                    head_dim=d, causal=causal, n=n, mode=mode))
  return out


# ----------------------------------------------------------------------------- reporting

def _cell(row) -> str:
  if row is None:
    return ""
  if row["tflops"] is None:
    return row["status"]
  if row["tflops"] < 0.1:
    return f"{row['seconds'] * 1e3:.1f} ms"
  return f"{row['tflops']:.1f}"


def markdown(rows, errors, lengths, header: str, ratio_rows=None) -> str:
  """The medians of every (impl, N) per head_dim and causality, then every ratio
  (``ratios``; computed when None) beside both sides' times, then the output check."""
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
  ratio_rows = ratios(rows) if ratio_rows is None else ratio_rows
  sections = (
      ("xla", "speedup", "Speed-up over XLA (`xla`'s time over the implementation's)"),
      ("attnlab_pallas", "speedup", "Block-sparse speed-up of attnlab's kernel over its dense "
       "causal run (`attnlab_pallas`'s time over the pattern's)"),
      ("attnlab_pallas", "cost", "Score modifiers in attnlab's kernel: time over the same "
       "kernel without one (1.00× = free)"))
  for baseline, kind, title in sections:
    mine = [c for c in ratio_rows if c["baseline"] == baseline and c["kind"] == kind]
    if not mine:
      continue
    lines += [f"### {title}", "", "Both sides timed in the same rounds. Times in ms, median "
              "(smallest–largest); the ratio is the ratio of the medians (smallest–largest "
              "of the per-round ratios).", "",
              f"| impl | head_dim | causal | mode | N | impl ms | `{baseline}` ms | ratio |",
              "|---|---|---|---|---|---|---|---|"]
    for c in mine:
      impl, base = ((c["denominator"], c["numerator"]) if kind == "speedup"
                    else (c["numerator"], c["denominator"]))
      lines.append(f"| {c['impl']} | {c['head_dim']} | {c['causal']} | {c['mode']} | {c['n']} "
                   f"| {benchtime.time_text(impl, digits=2)} | "
                   f"{benchtime.time_text(base, digits=2)} | {benchtime.ratio_text(c)} |")
    lines.append("")
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
  benchtime.save_figure(fig, path_png, dpi=110)
  plt.close(fig)


def _bools(text):
  return [{"true": True, "false": False}[t.strip().lower()] for t in text.split(",")]


# --quick: a tiny run (well under a minute on 2 CPU cores) to smoke-test the script; flags
# given explicitly still win
QUICK = dict(lengths="64,128", head_dims="16", causal="true", heads=2, batch_tokens=1,
             dtype="float32", block=32, window=32, bigbird_block=32, repeats=3,
             impls="attnlab_pallas,xla,pallas_sliding_window,pallas_alibi",
             out=str(pathlib.Path(tempfile.gettempdir()) / "bench_kernels_quick"))


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
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed rounds; each round times every implementation once")
  parser.add_argument("--max_seconds", type=float, default=30.0)
  parser.add_argument("--budget_s", type=float, default=None,
                      help="stop timing after this many seconds; later rows are marked skipped")
  parser.add_argument("--quick", action="store_true",
                      help="a tiny run to smoke-test the script: " + ", ".join(
                          f"--{k}={v}" for k, v in QUICK.items()))
  parser.add_argument("--out", default="docs/bench_kernels")
  if "--quick" in (sys.argv[1:] if argv is None else argv):
    parser.set_defaults(**QUICK)
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
            f"heads, batch = max(1, {args.batch_tokens} // N), Pallas tiles {args.block}. Every "
            f"cell is the median of {args.repeats} timed rounds after an untimed compiling run; "
            f"each round times every implementation once at that size (baselines first), so "
            f"every ratio divides two times of the same round. FLOPs: 4·B·H·N²·D forward, half "
            f"if causal, ×3.5 with backward. Sliding window {args.window}; BigBird blocks of "
            f"{args.bigbird_block} (window 3, global 1, random 1), both causal.")
  load = {"start": benchtime.load_average()}
  errors = check_outputs(impls, n=lengths[0], heads=args.heads, head_dim=head_dims[0],
                         dtype=dtype, causal=causals[0])
  rows = measure(impls, lengths=lengths, head_dims=head_dims, causals=causals,
                 batch_tokens=args.batch_tokens, heads=args.heads, dtype=dtype,
                 repeats=args.repeats, max_seconds=args.max_seconds, budget_s=args.budget_s)
  load["end"] = benchtime.load_average()
  ratio_rows = ratios(rows)
  out = pathlib.Path(args.out)
  text = markdown(rows, errors, lengths, header, ratio_rows)
  text += benchtime.load_text(load)
  benchtime.write_json(out.with_suffix(".json"), dict(
      device=device.device_kind, backend=jax.default_backend(), jax=jax.__version__,
      args=vars(args), check=errors, rows=rows, ratios=ratio_rows, load_average=load),
      provenance())
  benchtime.write_text(out.with_suffix(".md"), text)
  plot(rows, out.with_suffix(".png"))
  print(text)
  print(f"wrote {out.with_suffix('.md')}, .json, .png")
  return dict(check=errors, rows=rows, ratios=ratio_rows)


if __name__ == "__main__":
  main()
