"""Import a Hugging Face checkpoint (``config.json``, safetensors, ``tokenizer.json``) into
an attnlab workdir (the engine behind ``python -m attnlab.import_hf``).

One entry of ``FAMILIES`` per Hugging Face ``model_type`` says how that family's config
becomes attnlab's ``model`` block (``Family.model``) and how its tensors become attnlab's
parameter tree (``Family.params``). Everything else is shared: reading (sharded)
safetensors without torch, checking every tensor's shape against what the config implies,
and writing the workdir (``config.json``, a checkpoint at step 0, ``tokenizer.json``,
``import.json`` naming the source). The workdir is an ordinary one: ``evaluate``,
``generate``, ``analyze`` and the sweep read it unchanged.

attnlab keeps q, k and v in one projection whose columns are ``[q heads | k heads | v
heads]``; separate q/k/v tensors are concatenated, and GPT-NeoX's and BLOOM's fused
per-head ``[heads, 3, head_dim]`` rows are reordered into that layout. PyTorch ``Linear``
weights are ``[out, in]`` and are transposed; GPT-2's ``Conv1D`` weights are ``[in, out]``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
from typing import Callable

import jax
import ml_collections
import numpy as np

from attnlab import config_lib, outputs
from attnlab import workdir as workdir_lib
from attnlab.models import build_lm
from attnlab.positional import rope
from attnlab.registry import ConfigError, Registry

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


class HFImportError(ConfigError):
  """A checkpoint that cannot be imported: what is wrong, named (one line)."""


# ----------------------------------------------------------------------------- tensors


class Tensors:
  """The tensors of a (possibly sharded) safetensors checkpoint, read on demand as float32
  numpy arrays (bfloat16 and float16 included), each checked against the shape the config
  implies. ``prefixes``: optional leading name parts (``transformer.``) a checkpoint of
  the bare model lacks."""

  def __init__(self, directory: pathlib.Path, what: str):
    self.directory, self.what = directory, what
    if (directory / INDEX).is_file():
      try:
        index = json.loads((directory / INDEX).read_text())
      except json.JSONDecodeError as e:
        raise HFImportError(f"{directory / INDEX} is not valid JSON ({e})") from None
      weight_map = index.get("weight_map") if isinstance(index, dict) else None
      if not isinstance(weight_map, dict) or not weight_map:
        raise HFImportError(f"{directory / INDEX} has no weight_map (an object naming the "
                            f"shard of every tensor)")
    elif (directory / WEIGHTS).is_file():
      weight_map = None
    else:
      raise HFImportError(f"--checkpoint={str(directory)!r} has neither {WEIGHTS} nor {INDEX}")
    from safetensors import safe_open
    self._files = {}
    names = {}
    shards = sorted(set(map(str, weight_map.values()))) if weight_map else [WEIGHTS]
    for shard in shards:
      _check_shard(directory, shard)
    self.shards = shards       # the files read, relative to ``directory`` (import.json hashes them)
    for shard in shards:
      path = directory / shard
      if not path.is_file():
        raise HFImportError(f"--checkpoint={str(directory)!r}: shard {shard} named in {INDEX} "
                            f"does not exist")
      try:
        handle = safe_open(str(path), framework="flax")
      except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise HFImportError(f"{path} is not a readable safetensors file ({e})") from None
      self._files[shard] = handle
      for name in handle.keys():
        names[name] = shard
    self._names = names
    self.used: set[str] = set()

  def find(self, name: str, prefixes=("",)) -> str | None:
    for prefix in prefixes:
      if prefix + name in self._names:
        return prefix + name
    return None

  def take(self, name: str, shape: tuple[int, ...], prefixes=("",)) -> np.ndarray:
    """Tensor ``name`` as float32, which must have ``shape``."""
    full = self.find(name, prefixes)
    if full is None:
      raise HFImportError(f"--checkpoint={str(self.directory)!r} lacks tensor {prefixes[0] + name!r}"
                          f", which {self.what} needs")
    value = np.asarray(self._files[self._names[full]].get_tensor(full), np.float32)
    if value.shape != tuple(shape):
      raise HFImportError(f"tensor {full!r} has shape {tuple(value.shape)}; config.json of "
                          f"{self.what} implies {tuple(shape)}")
    self.used.add(full)
    return value

  def unused(self) -> list[str]:
    return sorted(set(self._names) - self.used)


def _check_shard(directory: pathlib.Path, shard: str) -> None:
  """A shard named in the index must be a relative path inside the checkpoint folder (no
  absolute path, no ``..``): an index cannot make the import read files from elsewhere."""
  rel = pathlib.PurePosixPath(shard)
  if not shard or rel.is_absolute() or "\\" in shard or ".." in rel.parts or \
      pathlib.PureWindowsPath(shard).drive:
    raise HFImportError(f"{directory / INDEX}: shard {shard!r} is not inside the checkpoint "
                        f"folder; valid: a file name (or relative path without '..') in "
                        f"{directory}")


# ----------------------------------------------------------------------------- families


@dataclasses.dataclass(frozen=True)
class Family:
  """How one Hugging Face ``model_type`` maps onto attnlab.

  ``model(hf) -> (model overrides, data.seq_len)``: attnlab's ``model`` fields from the
  Hugging Face config dict. ``params(tensors, hf, m) -> params``: the parameter tree, ``m``
  being the model block built from ``model``. ``ignored``: name fragments of tensors that
  carry no parameters (cached masks, rotary tables).
  """
  model: Callable[[dict], tuple[dict, int]]
  params: Callable[[Tensors, dict, ml_collections.ConfigDict], dict]
  ignored: tuple[str, ...] = ()


FAMILIES: Registry[Family] = Registry("model_type")


def _need(hf: dict, key: str, what: str, kind=int):
  """``hf[key]``, which must be present; a count or size (``kind=int``, the default) must
  be an integer >= 1."""
  if key not in hf or hf[key] is None:
    raise HFImportError(f"config.json of {what} lacks {key!r}")
  return _valid(hf, key, what) if kind is int else hf[key]


def _valid(hf: dict, key: str, what: str, default=None):
  """``hf[key]`` (``default`` when absent or null) as a count or size: an integer >= 1."""
  value = hf.get(key)
  if value is None:
    return default
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise HFImportError(f"config.json of {what}: {key}={value!r} is not valid; valid: an "
                        f"integer >= 1")
  return value


def _refuse(condition: bool, message: str) -> None:
  if condition:
    raise HFImportError(message)


def _rope(hf: dict, head_dim: int, max_len: int, what: str, fraction: float = 1.0) -> dict:
  """attnlab ``model.position`` for a RoPE family: theta, partial rotary and the scaling in
  ``rope_parameters`` (transformers >= 5) or ``rope_theta`` / ``rope_scaling`` (before)."""
  params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
  theta = (params.get("rope_theta") or hf.get("rope_theta") or hf.get("rotary_emb_base")
           or 10000.0)                      # a key may be present and null
  fraction = params.get("partial_rotary_factor") or hf.get("partial_rotary_factor") or fraction
  rope_type = params.get("rope_type") or params.get("type") or "default"
  rotated = int(head_dim * fraction)
  _refuse(rotated % 2 or rotated < 2, f"{what}: partial rotary factor {fraction} rotates "
          f"{rotated} of {head_dim} head dims; attnlab rotates an even number >= 2")
  position = {"kind": "rope", "theta": float(theta), "rotary_fraction": float(fraction)}
  scalings = {"default": "none", "linear": "linear", "dynamic": "dynamic_ntk", "yarn": "yarn",
              "llama3": "llama3", "longrope": "longrope"}
  _refuse(rope_type not in scalings, f"{what}: rope type {rope_type!r} is not supported; "
          f"supported: {', '.join(scalings)}")
  if rope_type != "default":
    original = int(params.get("original_max_position_embeddings")
                   or hf.get("original_max_position_embeddings") or max_len)
    if rope_type == "dynamic":   # transformers grows the base beyond max_position_embeddings
      original = max_len
    factor = params.get("factor") or (max_len / original if rope_type in ("yarn", "longrope")
                                      else None)
    _refuse(factor is None, f"{what}: rope scaling {rope_type!r} without a factor")
    position.update(scaling=scalings[rope_type], scale_factor=float(factor),
                    original_max_len=original)
  if rope_type == "yarn":
    temperature = params.get("attention_factor")
    _refuse((temperature is not None and abs(temperature - rope.yarn_mscale(factor)) > 1e-6)
            or (params.get("mscale") and params.get("mscale_all_dim")),
            f"{what}: YaRN with its own attention_factor, or mscale with mscale_all_dim "
            f"(DeepSeek's variant), is not supported; attnlab implements the YaRN authors' "
            f"form (with or without truncation)")
    position.update(yarn_beta=float(params.get("beta_fast") or 32.0),
                    yarn_alpha=float(params.get("beta_slow") or 1.0),
                    yarn_truncate=params.get("truncate", True) is not False)
  if rope_type == "longrope":
    short, long = params.get("short_factor"), params.get("long_factor")
    _refuse(not isinstance(short, list) or not isinstance(long, list),
            f"{what}: longrope needs short_factor and long_factor lists")
    position.update(longrope_short_factor=tuple(float(x) for x in short),
                    longrope_long_factor=tuple(float(x) for x in long),
                    longrope_attention_factor=float(params.get("attention_factor") or 0.0))
  if rope_type == "llama3":
    position.update(llama3_low_freq_factor=float(params.get("low_freq_factor") or 1.0),
                    llama3_high_freq_factor=float(params.get("high_freq_factor") or 4.0))
  return position


def _activation(name: str, gated: bool, what: str) -> str:
  table = {("gelu", False): "gelu_exact", ("gelu_new", False): "gelu",
           ("gelu_pytorch_tanh", False): "gelu", ("gelu_fast", False): "gelu",
           ("silu", True): "swiglu", ("swish", True): "swiglu"}
  _refuse((name, gated) not in table, f"{what}: activation {name!r} is not supported "
          f"({'gated' if gated else 'plain'} MLP); supported: "
          f"{', '.join(n for n, g in table if g == gated)}")
  return table[(name, gated)]


def _norm(t: Tensors, name: str, d: int, bias: bool, prefixes) -> dict:
  out = {"scale": t.take(f"{name}.weight", (d,), prefixes)}
  if bias:
    out["bias"] = t.take(f"{name}.bias", (d,), prefixes)
  return out


def _linear(t: Tensors, name: str, n_in: int, n_out: int, bias: bool, prefixes) -> dict:
  """A PyTorch ``Linear`` ([out, in]) as a Flax ``Dense`` ([in, out])."""
  out = {"kernel": t.take(f"{name}.weight", (n_out, n_in), prefixes).T}
  if bias:
    out["bias"] = t.take(f"{name}.bias", (n_out,), prefixes)
  return out


def _per_head_qkv(t: Tensors, name: str, d: int, heads: int, prefixes) -> dict:
  """A fused ``[heads, 3, head_dim]``-row projection (GPT-NeoX, BLOOM) as attnlab's
  ``[q heads | k heads | v heads]`` columns."""
  dh = d // heads
  w = t.take(f"{name}.weight", (3 * d, d), prefixes).reshape(heads, 3, dh, d)
  b = t.take(f"{name}.bias", (3 * d,), prefixes).reshape(heads, 3, dh)
  return {"kernel": w.transpose(1, 0, 2, 3).reshape(3 * d, d).T,
          "bias": b.transpose(1, 0, 2).reshape(3 * d)}


def _fused_qkv_block(t: Tensors, m, x: str, attention: str, p) -> dict:
  """One GPT-NeoX / BLOOM layer ``x`` (e.g. ``layers.3.``): LayerNorms, the fused per-head
  ``{attention}.query_key_value`` and ``{attention}.dense``, the 4h MLP, all with biases."""
  d, h, heads = m.d_model, m.mlp_hidden, m.attention.num_heads
  return {
      "norm_attention": _norm(t, x + "input_layernorm", d, True, p),
      "attention": {"qkv": _per_head_qkv(t, f"{x}{attention}.query_key_value", d, heads, p),
                    "out": _linear(t, f"{x}{attention}.dense", d, d, True, p)},
      "norm_mlp": _norm(t, x + "post_attention_layernorm", d, True, p),
      "mlp": {"up": _linear(t, x + "mlp.dense_h_to_4h", d, h, True, p),
              "down": _linear(t, x + "mlp.dense_4h_to_h", h, d, True, p)}}


def _embedding_and_head(t: Tensors, m, p) -> dict:
  """``embed``, ``norm_final`` and the output head of a LLaMA-like checkpoint
  (``embed_tokens``, ``norm``, ``lm_head``)."""
  embedding = t.take("embed_tokens.weight", (m.vocab_size, m.d_model), p)
  return {"embed": {"embedding": embedding}, "norm_final": _norm(t, "norm", m.d_model, False, p),
          **_head(t, m, "lm_head.weight", ("",), embedding)}


def _head(t: Tensors, m, name: str, prefixes, embedding: np.ndarray) -> dict:
  """The untied output head, or nothing when tied (a tied checkpoint may store the head
  anyway: it must then equal the embedding)."""
  shape = (m.vocab_size, m.d_model)
  if not m.tie_embeddings:
    return {"unembed": {"kernel": t.take(name, shape, prefixes).T}}
  if t.find(name, prefixes) is not None and not np.array_equal(t.take(name, shape, prefixes),
                                                               embedding):
    raise HFImportError(f"{t.what}: tie_word_embeddings is true but {name} differs from the "
                        f"token embedding")
  return {}


# GPT-2 ---------------------------------------------------------------------------------

def _gpt2_model(hf):
  what = "GPT-2"
  _refuse(hf.get("scale_attn_by_inverse_layer_idx", False) or hf.get("add_cross_attention")
          or not hf.get("scale_attn_weights", True),
          f"{what}: scale_attn_by_inverse_layer_idx, scale_attn_weights=False and cross "
          f"attention are not supported")
  d, heads = _need(hf, "n_embd", what), _need(hf, "n_head", what)
  positions = _need(hf, "n_positions", what)
  model = {"num_layers": _need(hf, "n_layer", what), "d_model": d,
           "attention": {"num_heads": heads, "num_kv_heads": heads},
           "mlp": _activation(hf.get("activation_function", "gelu_new"), False, what),
           "mlp_hidden": _valid(hf, "n_inner", what) or 4 * d, "norm": "layernorm",
           "norm_eps": hf.get("layer_norm_epsilon", 1e-5), "use_bias": True,
           "tie_embeddings": True,
           "position": {"kind": "learned", "max_len": positions}}
  return model, positions


def _gpt2_params(t, hf, m):
  p = ("transformer.", "")
  d, h = m.d_model, m.mlp_hidden
  params = {"embed": {"embedding": t.take("wte.weight", (m.vocab_size, d), p)},
            "position_table": t.take("wpe.weight", (m.position.max_len, d), p),
            "norm_final": _norm(t, "ln_f", d, True, p)}
  for i in range(m.num_layers):
    x = f"h.{i}."
    conv = lambda name, n_in, n_out: {  # noqa: E731  Conv1D: [in, out]
        "kernel": t.take(f"{x}{name}.weight", (n_in, n_out), p),
        "bias": t.take(f"{x}{name}.bias", (n_out,), p)}
    params[f"block_{i}"] = {
        "norm_attention": _norm(t, x + "ln_1", d, True, p),
        "attention": {"qkv": conv("attn.c_attn", d, 3 * d), "out": conv("attn.c_proj", d, d)},
        "norm_mlp": _norm(t, x + "ln_2", d, True, p),
        "mlp": {"up": conv("mlp.c_fc", d, h), "down": conv("mlp.c_proj", h, d)}}
  return {**params, **_head(t, m, "lm_head.weight", ("",), params["embed"]["embedding"])}


FAMILIES.register("gpt2")(Family(_gpt2_model, _gpt2_params, (".attn.bias", ".attn.masked_bias")))


# GPT-NeoX (Pythia) ----------------------------------------------------------------------

def _neox_model(hf):
  what = "GPT-NeoX"
  d, heads = _need(hf, "hidden_size", what), _need(hf, "num_attention_heads", what)
  max_len = _need(hf, "max_position_embeddings", what)
  _refuse(not hf.get("attention_bias", True), f"{what}: attention_bias=False is not supported")
  model = {"num_layers": _need(hf, "num_hidden_layers", what), "d_model": d,
           "attention": {"num_heads": heads, "num_kv_heads": heads},
           "mlp": _activation(hf.get("hidden_act", "gelu"), False, what),
           "mlp_hidden": _need(hf, "intermediate_size", what), "norm": "layernorm",
           "norm_eps": hf.get("layer_norm_eps", 1e-5), "use_bias": True,
           "parallel_residual": bool(hf.get("use_parallel_residual", True)),
           "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
           "position": _rope(hf, d // heads, max_len, what, hf.get("rotary_pct", 0.25))}
  return model, max_len


def _neox_params(t, hf, m):
  p = ("gpt_neox.", "")
  d = m.d_model
  params = {"embed": {"embedding": t.take("embed_in.weight", (m.vocab_size, d), p)},
            "norm_final": _norm(t, "final_layer_norm", d, True, p),
            **_head(t, m, "embed_out.weight", ("",), None)}
  for i in range(m.num_layers):
    params[f"block_{i}"] = _fused_qkv_block(t, m, f"layers.{i}.", "attention", p)
  return params


FAMILIES.register("gpt_neox")(Family(_neox_model, _neox_params,
                                     (".attention.bias", ".attention.masked_bias", "inv_freq")))


# LLaMA, Mistral, Qwen2 -------------------------------------------------------------------

def _llama_model(hf, what="LLaMA"):
  d, heads = _need(hf, "hidden_size", what), _need(hf, "num_attention_heads", what)
  kv_heads = _valid(hf, "num_key_value_heads", what) or heads
  max_len = _need(hf, "max_position_embeddings", what)
  head_dim = _valid(hf, "head_dim", what) or d // heads
  attention_bias, mlp_bias = hf.get("attention_bias", False), hf.get("mlp_bias", False)
  qkv_bias = hf.get("model_type") == "qwen2"
  _refuse(attention_bias != mlp_bias, f"{what}: attention_bias={attention_bias} with "
          f"mlp_bias={mlp_bias} is not supported (attnlab: biases everywhere or none, or on q/k/v "
          f"only as Qwen2)")
  attention = {"num_heads": heads, "num_kv_heads": kv_heads,
               "qk_norm": hf.get("model_type") == "qwen3"}
  model = {"num_layers": _need(hf, "num_hidden_layers", what), "d_model": d,
           "head_dim": head_dim if head_dim != d // heads or d % heads else 0,
           "attention": attention, "mlp": _activation(hf.get("hidden_act", "silu"), True, what),
           "mlp_hidden": _need(hf, "intermediate_size", what), "norm": "rmsnorm",
           "norm_eps": hf.get("rms_norm_eps", 1e-6), "use_bias": bool(attention_bias),
           "qkv_bias": qkv_bias, "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
           "position": _rope(hf, head_dim, max_len, what)}
  _merge_dict(model, _schedule(hf, what, _sliding_layers(hf, what), _rope_layers(hf, what)))
  return model, max_len


def _merge_dict(base: dict, overrides: dict) -> None:
  for key, value in overrides.items():
    if isinstance(value, dict):
      _merge_dict(base.setdefault(key, {}), value)
    else:
      base[key] = value


def _sliding_layers(hf: dict, what: str) -> list[int | None]:
  """The window of each layer (None: global), as transformers decides it: Mistral's
  ``sliding_window`` on every layer (4096 when absent, null: none); otherwise
  ``layer_types`` (Qwen2/3, SmolLM3, Gemma), or Qwen2's ``use_sliding_window`` from
  ``max_window_layers`` on, gated by ``use_sliding_window`` where the family has it."""
  model_type, layers = hf.get("model_type"), _need(hf, "num_hidden_layers", what)
  if model_type == "mistral":
    return [hf.get("sliding_window", 4096)] * layers
  if model_type == "phi3":    # one window on every layer when set
    return [hf.get("sliding_window")] * layers
  if model_type == "llama":
    return [None] * layers
  window = hf.get("sliding_window")
  if model_type in ("qwen2", "qwen3", "smollm3") and not hf.get("use_sliding_window", False):
    window = None
  types = hf.get("layer_types")
  if types is None and model_type in ("qwen2", "qwen3"):
    types = ["sliding_attention" if window and i >= hf.get("max_window_layers", 28)
             else "full_attention" for i in range(layers)]
  if types is None and model_type in ("gemma2", "gemma3_text"):
    period = 2 if model_type == "gemma2" else int(hf.get("sliding_window_pattern") or 6)
    types = ["sliding_attention" if (i + 1) % period else "full_attention"
             for i in range(layers)]
  types = types or ["full_attention"] * layers
  _refuse(not isinstance(types, list) or len(types) != layers
          or not set(types) <= {"sliding_attention", "full_attention"},
          f"{what}: layer_types={_short(types)} is not valid; valid: a list of "
          f"'sliding_attention' / 'full_attention', one per layer ({layers})")
  if not window:            # transformers: no sliding_window, no window on any layer
    return [None] * layers
  return [window if t == "sliding_attention" else None for t in types]


def _rope_layers(hf: dict, what: str) -> list[bool]:
  """Whether each layer applies RoPE: SmolLM3's ``no_rope_layers`` (1: RoPE, 0: NoPE)."""
  layers = _need(hf, "num_hidden_layers", what)
  flags = hf.get("no_rope_layers")
  if flags is None:
    return [True] * layers
  _refuse(not isinstance(flags, list) or len(flags) != layers or not set(flags) <= {0, 1},
          f"{what}: no_rope_layers={_short(flags)} is not valid; valid: a list of 0/1, one "
          f"per layer ({layers})")
  return [bool(f) for f in flags]


def _schedule(hf: dict, what: str, windows: list, rope: list, types_always=False) -> dict:
  """attnlab's ``model`` overrides for per-layer windows and RoPE: one window on every
  layer is the ``sliding_window`` pattern; a mix is ``model.layer_types`` (run-length
  encoded over its shortest repeating unit) with ``local_window``."""
  sizes = {w for w in windows if w}
  _refuse(len(sizes) > 1, f"{what}: sliding windows of different sizes {sorted(sizes)} are "
          f"not supported (attnlab: one model.local_window)")
  window = sizes.pop() if sizes else None
  if window and all(windows) and all(rope) and not types_always:
    # Hugging Face: key j visible from i when i - j < window; attnlab: <= window
    return {"attention": {"pattern": "sliding_window", "window": int(window) - 1}}
  types = [("local" if w else "global") if r else ("local_nope" if w else "nope")
           for w, r in zip(windows, rope)]
  if set(types) == {"global"}:
    return {}
  period = next(p for p in range(1, len(types) + 1)
                if all(types[i] == types[i % p] for i in range(len(types))))
  unit, runs = types[:period], []
  for t in unit:
    if runs and runs[-1][0] == t:
      runs[-1][1] += 1
    else:
      runs.append([t, 1])
  out = {"layer_types": ",".join(t if n == 1 else f"{t}*{n}" for t, n in runs)}
  if window:
    out["local_window"] = int(window) - 1
  return out


def _qkv(t: Tensors, x: str, d: int, heads: int, kv_heads: int, dh: int, bias: bool, p) -> dict:
  """Separate ``q_proj`` / ``k_proj`` / ``v_proj`` as attnlab's one ``qkv`` projection."""
  parts = [_linear(t, f"{x}self_attn.{n}_proj", d, k * dh, bias, p)
           for n, k in (("q", heads), ("k", kv_heads), ("v", kv_heads))]
  qkv = {"kernel": np.concatenate([q["kernel"] for q in parts], axis=1)}
  if bias:
    qkv["bias"] = np.concatenate([q["bias"] for q in parts])
  return qkv


def _llama_params(t, hf, m):
  p = ("model.", "")
  d, h = m.d_model, m.mlp_hidden
  heads, kv_heads = m.attention.num_heads, m.attention.num_kv_heads
  dh = m.head_dim or d // heads
  bias, qkv_bias = m.use_bias, m.use_bias or m.qkv_bias
  embedding = t.take("embed_tokens.weight", (m.vocab_size, d), p)
  params = {"embed": {"embedding": embedding}, "norm_final": _norm(t, "norm", d, False, p),
            **_head(t, m, "lm_head.weight", ("",), embedding)}
  for i in range(m.num_layers):
    x = f"layers.{i}."
    attention = {"qkv": _qkv(t, x, d, heads, kv_heads, dh, qkv_bias, p),
                 "out": _linear(t, x + "self_attn.o_proj", heads * dh, d, bias, p)}
    if m.attention.qk_norm:
      attention.update(query_norm=_norm(t, x + "self_attn.q_norm", dh, False, p),
                       key_norm=_norm(t, x + "self_attn.k_norm", dh, False, p))
    params[f"block_{i}"] = {
        "norm_attention": _norm(t, x + "input_layernorm", d, False, p),
        "attention": attention,
        "norm_mlp": _norm(t, x + "post_attention_layernorm", d, False, p),
        "mlp": {"gate": _linear(t, x + "mlp.gate_proj", d, h, bias, p),
                "up": _linear(t, x + "mlp.up_proj", d, h, bias, p),
                "down": _linear(t, x + "mlp.down_proj", h, d, bias, p)}}
  return params


for _name, _what in (("llama", "LLaMA"), ("mistral", "Mistral"), ("qwen2", "Qwen2"),
                     ("qwen3", "Qwen3"), ("smollm3", "SmolLM3")):
  FAMILIES.register(_name)(Family(lambda hf, w=_what: _llama_model(hf, w), _llama_params,
                                  ("rotary_emb.inv_freq",)))


# Phi-3 (LongRoPE) -------------------------------------------------------------------------

def _phi3_model(hf):
  what = "Phi-3"
  _refuse(bool(hf.get("attention_bias", False)) or bool(hf.get("mlp_bias", False)),
          f"{what}: biases are not supported (Phi-3 has none)")
  return _llama_model(hf, what)


def _phi3_params(t, hf, m):
  """Phi-3 is LLaMA's layer with fused projections: ``qkv_proj`` rows [q | k | v] (attnlab's
  ``qkv`` columns, transposed) and ``gate_up_proj`` rows [gate | up]."""
  p = ("model.", "")
  d, f = m.d_model, m.mlp_hidden
  heads, kv_heads = m.attention.num_heads, m.attention.num_kv_heads
  dh = m.head_dim or d // heads
  params = _embedding_and_head(t, m, p)
  for i in range(m.num_layers):
    x = f"layers.{i}."
    gate_up = _linear(t, x + "mlp.gate_up_proj", d, 2 * f, False, p)["kernel"]
    params[f"block_{i}"] = {
        "norm_attention": _norm(t, x + "input_layernorm", d, False, p),
        "attention": {"qkv": _linear(t, x + "self_attn.qkv_proj", d, (heads + 2 * kv_heads) * dh,
                                     False, p),
                      "out": _linear(t, x + "self_attn.o_proj", heads * dh, d, False, p)},
        "norm_mlp": _norm(t, x + "post_attention_layernorm", d, False, p),
        "mlp": {"gate": {"kernel": gate_up[:, :f]}, "up": {"kernel": gate_up[:, f:]},
                "down": _linear(t, x + "mlp.down_proj", f, d, False, p)}}
  return params


FAMILIES.register("phi3")(Family(_phi3_model, _phi3_params, ("rotary_emb",)))


# DeepSeek-V3 (multi-head latent attention, routed experts) ---------------------------------

def _deepseek_v3_model(hf):
  what = "DeepSeek-V3"
  d, heads = _need(hf, "hidden_size", what), _need(hf, "num_attention_heads", what)
  layers, max_len = _need(hf, "num_hidden_layers", what), _need(hf, "max_position_embeddings", what)
  nope, rope_dim = _need(hf, "qk_nope_head_dim", what), _need(hf, "qk_rope_head_dim", what)
  value_dim = _need(hf, "v_head_dim", what)
  _refuse(bool(hf.get("attention_bias", False)), f"{what}: attention_bias=True is not supported")
  _refuse(hf.get("hidden_act", "silu") != "silu", f"{what}: hidden_act="
          f"{hf.get('hidden_act')!r} is not supported; valid: silu")
  params = {**(hf.get("rope_scaling") or {}), **(hf.get("rope_parameters") or {})}
  _refuse((params.get("rope_type") or params.get("type") or "default") != "default",
          f"{what}: rope scaling {params.get('rope_type') or params.get('type')!r} is not "
          f"supported (DeepSeek's YaRN also rescales the non-rotary dims); valid: default")
  first_dense = hf.get("first_k_dense_replace")
  first_dense = 0 if first_dense is None else first_dense
  _refuse(not isinstance(first_dense, int) or first_dense < 0, f"{what}: first_k_dense_replace="
          f"{first_dense!r} is not valid; valid: an integer >= 0")
  attention = {"num_heads": heads, "num_kv_heads": heads,
               "latent_rank": _need(hf, "kv_lora_rank", what),
               "latent_query_rank": _valid(hf, "q_lora_rank", what, 0),
               "latent_rope_dim": rope_dim,
               "latent_value_dim": 0 if value_dim == nope else value_dim}
  model = {"num_layers": layers, "d_model": d, "head_dim": nope, "attention": attention,
           "mlp": "swiglu", "mlp_hidden": _need(hf, "intermediate_size", what),
           "norm": "rmsnorm", "norm_eps": hf.get("rms_norm_eps", 1e-6),
           "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
           "position": _rope(hf, rope_dim, max_len, what)}
  if first_dense < layers:       # the later layers route (DeepseekV3MoE)
    experts = _need(hf, "n_routed_experts", what)
    groups = _valid(hf, "n_group", what, 1)
    _refuse(hf.get("topk_method", "noaux_tc") != "noaux_tc", f"{what}: topk_method="
            f"{hf.get('topk_method')!r} is not supported; valid: noaux_tc")
    model.update(mlp="moe", moe_first_dense=first_dense, moe_experts=experts,
                 moe_top_k=_need(hf, "num_experts_per_tok", what),
                 moe_router="sigmoid_grouped", moe_expert="swiglu",
                 moe_expert_hidden=_need(hf, "moe_intermediate_size", what),
                 moe_groups=groups, moe_topk_groups=_valid(hf, "topk_group", what, 1),
                 moe_norm_topk=bool(hf.get("norm_topk_prob", True)),
                 moe_routed_scale=float(hf.get("routed_scaling_factor", 1.0)),
                 moe_shared_experts=int(hf.get("n_shared_experts") or 0))
  return model, max_len


def _interleaved_to_halves(x, rope_dim: int):
  """Columns of the last axis's final ``rope_dim`` entries reordered from interleaved pairs
  (x0, x1), (x2, x3), ... to halves (x0, x2, ... | x1, x3, ...): attnlab's half-split
  rotation of the reordered vector is DeepSeek's interleaved one (``rope_interleave``), and
  the dot products of queries with keys are unchanged by the common reordering."""
  head, rot = x[..., :-rope_dim], x[..., -rope_dim:]
  return np.concatenate([head, rot[..., 0::2], rot[..., 1::2]], axis=-1)


def _deepseek_v3_params(t, hf, m):
  p = ("model.", "")
  a = m.attention
  d, heads = m.d_model, a.num_heads
  nope, rope_dim, r = m.head_dim, a.latent_rope_dim, a.latent_rank
  value_dim = a.latent_value_dim or nope
  interleaved = hf.get("rope_interleave", True)
  reorder = (lambda w: _interleaved_to_halves(w, rope_dim)) if interleaved else (lambda w: w)
  params = _embedding_and_head(t, m, p)
  for i in range(m.num_layers):
    x = f"layers.{i}.self_attn."
    att = {}
    if a.latent_query_rank:
      att["query_down"] = _linear(t, x + "q_a_proj", d, a.latent_query_rank, False, p)
      att["query_down_norm"] = _norm(t, x + "q_a_layernorm", a.latent_query_rank, False, p)
      name, n_in = "query_up", a.latent_query_rank
    else:
      name, n_in = "query", d
    q = _linear(t, x + ("q_b_proj" if a.latent_query_rank else "q_proj"), n_in,
                heads * (nope + rope_dim), False, p)["kernel"]
    att[name] = {"kernel": reorder(q.reshape(n_in, heads, nope + rope_dim)).reshape(n_in, -1)}
    down = _linear(t, x + "kv_a_proj_with_mqa", d, r + rope_dim, False, p)["kernel"]
    att["kv_down"] = {"kernel": reorder(down)}
    att["kv_down_norm"] = _norm(t, x + "kv_a_layernorm", r, False, p)
    att["kv_up"] = t.take(x + "kv_b_proj.weight", (heads * (nope + value_dim), r), p).T
    att["out"] = _linear(t, x + "o_proj", heads * value_dim, d, False, p)
    y = f"layers.{i}."
    params[f"block_{i}"] = {"norm_attention": _norm(t, y + "input_layernorm", d, False, p),
                            "attention": att,
                            "norm_mlp": _norm(t, y + "post_attention_layernorm", d, False, p),
                            "mlp": _deepseek_mlp(t, y + "mlp.", m, i, p)}
  return params


def _deepseek_mlp(t, x, m, layer: int, p) -> dict:
  """Block ``layer``'s MLP: dense SwiGLU before ``first_k_dense_replace``, else the routed
  experts (gate_up_proj [E, 2F, d] rows [gate | up], down_proj [E, d, F]), the router's
  weight and correction bias, and the shared experts."""
  d = m.d_model
  if m.mlp != "moe" or layer < m.moe_first_dense:
    f = m.mlp_hidden
    return {n: _linear(t, f"{x}{n}_proj", *((f, d) if n == "down" else (d, f)), False, p)
            for n in ("gate", "up", "down")}
  e, f = m.moe_experts, m.moe_expert_hidden or m.mlp_hidden
  if t.find(x + "experts.gate_up_proj", p):     # transformers' fused in-memory layout
    gate_up = t.take(x + "experts.gate_up_proj", (e, 2 * f, d), p)
    gate, up = gate_up[:, :f].transpose(0, 2, 1), gate_up[:, f:].transpose(0, 2, 1)
    down = t.take(x + "experts.down_proj", (e, d, f), p).transpose(0, 2, 1)
  else:                                           # one Linear per expert (released checkpoints)
    expert = lambda j, n, shape: _linear(t, f"{x}experts.{j}.{n}_proj", *shape, False,  # noqa: E731
                                         p)["kernel"]
    gate = np.stack([expert(j, "gate", (d, f)) for j in range(e)])
    up = np.stack([expert(j, "up", (d, f)) for j in range(e)])
    down = np.stack([expert(j, "down", (f, d)) for j in range(e)])
  out = {"router": t.take(x + "gate.weight", (e, d), p).T,
         "correction": t.take(x + "gate.e_score_correction_bias", (e,), p),
         "gate": gate, "up": up, "down": down}
  if m.moe_shared_experts:
    fs = f * m.moe_shared_experts
    for n in ("gate", "up", "down"):
      out[f"shared_{n}"] = _linear(t, f"{x}shared_experts.{n}_proj",
                                   *((fs, d) if n == "down" else (d, fs)), False, p)
  return out


FAMILIES.register("deepseek_v3")(Family(_deepseek_v3_model, _deepseek_v3_params,
                                        ("rotary_emb",)))


# Gemma-2, Gemma-3 (text) ------------------------------------------------------------------

def _gemma_model(hf, what):
  gemma3 = hf.get("model_type") == "gemma3_text"
  d, heads = _need(hf, "hidden_size", what), _need(hf, "num_attention_heads", what)
  kv_heads = _valid(hf, "num_key_value_heads", what) or heads
  head_dim = _valid(hf, "head_dim", what) or d // heads
  max_len = _need(hf, "max_position_embeddings", what)
  _refuse(bool(hf.get("attention_bias", False)), f"{what}: attention_bias=True is not supported")
  _refuse(bool(hf.get("use_bidirectional_attention", False)), f"{what}: "
          f"use_bidirectional_attention=True (an encoder) is not a causal language model")
  act = hf.get("hidden_activation") or hf.get("hidden_act") or "gelu_pytorch_tanh"
  _refuse(act not in ("gelu_pytorch_tanh", "gelu_new", "gelu_fast"), f"{what}: "
          f"hidden_activation {act!r} is not supported; supported: gelu_pytorch_tanh")
  scalar = hf.get("query_pre_attn_scalar") or head_dim
  params = hf.get("rope_parameters") or {}
  if gemma3 and "full_attention" in params:      # transformers >= 5: one entry per layer type
    global_rope = _rope({"rope_parameters": params["full_attention"]}, head_dim, max_len, what)
    local = params.get("sliding_attention") or {}
    _refuse((local.get("rope_type") or "default") != "default", f"{what}: RoPE scaling on the "
            f"sliding layers is not supported (attnlab scales the global layers only)")
    local_theta = float(local.get("rope_theta") or 10000.0)
  else:
    global_rope = _rope(hf, head_dim, max_len, what)
    local_theta = float(hf.get("rope_local_base_freq") or 10000.0) if gemma3 else 0.0
  model = {"num_layers": _need(hf, "num_hidden_layers", what), "d_model": d,
           "head_dim": head_dim,
           "attention": {"num_heads": heads, "num_kv_heads": kv_heads, "qk_norm": gemma3,
                         # transformers' Gemma-3 reads attn_logit_softcapping but never
                         # applies it; Gemma-2 does
                         "softcap": 0.0 if gemma3 else float(hf.get("attn_logit_softcapping")
                                                             or 0.0),
                         "score_scale": float(scalar) ** -0.5},
           "mlp": "geglu", "mlp_hidden": _need(hf, "intermediate_size", what),
           "norm": "rmsnorm", "norm_eps": hf.get("rms_norm_eps", 1e-6), "use_bias": False,
           "post_norms": True, "embed_scale": True,
           "logit_softcap": float(hf.get("final_logit_softcapping") or 0.0),
           "tie_embeddings": bool(hf.get("tie_word_embeddings", True)),
           "position": global_rope}
  layers = _schedule(hf, what, _sliding_layers(hf, what), _rope_layers(hf, what),
                     types_always=gemma3)
  if gemma3 and "local_window" in layers:   # local layers: their own base, no scaling
    layers["local_rope_theta"] = local_theta
  _merge_dict(model, layers)
  return model, max_len


def _gemma_norm(t: Tensors, name: str, d: int, prefixes) -> dict:
  """Gemma's RMSNorm scales by ``1 + weight``: attnlab's RMSNorm scale is ``1 + weight``."""
  return {"scale": 1.0 + t.take(f"{name}.weight", (d,), prefixes)}


def _gemma_params(t, hf, m):
  p = ("model.", "")
  d, h = m.d_model, m.mlp_hidden
  heads, kv_heads, dh = m.attention.num_heads, m.attention.num_kv_heads, m.head_dim
  embedding = t.take("embed_tokens.weight", (m.vocab_size, d), p)
  params = {"embed": {"embedding": embedding}, "norm_final": _gemma_norm(t, "norm", d, p),
            **_head(t, m, "lm_head.weight", ("",), embedding)}
  for i in range(m.num_layers):
    x = f"layers.{i}."
    attention = {"qkv": _qkv(t, x, d, heads, kv_heads, dh, False, p),
                 "out": _linear(t, x + "self_attn.o_proj", heads * dh, d, False, p)}
    if m.attention.qk_norm:
      attention.update(query_norm=_gemma_norm(t, x + "self_attn.q_norm", dh, p),
                       key_norm=_gemma_norm(t, x + "self_attn.k_norm", dh, p))
    params[f"block_{i}"] = {
        "norm_attention": _gemma_norm(t, x + "input_layernorm", d, p),
        "attention": attention,
        "norm_attention_out": _gemma_norm(t, x + "post_attention_layernorm", d, p),
        "norm_mlp": _gemma_norm(t, x + "pre_feedforward_layernorm", d, p),
        "norm_mlp_out": _gemma_norm(t, x + "post_feedforward_layernorm", d, p),
        "mlp": {"gate": _linear(t, x + "mlp.gate_proj", d, h, False, p),
                "up": _linear(t, x + "mlp.up_proj", d, h, False, p),
                "down": _linear(t, x + "mlp.down_proj", h, d, False, p)}}
  return params


for _name, _what in (("gemma2", "Gemma-2"), ("gemma3_text", "Gemma-3")):
  FAMILIES.register(_name)(Family(lambda hf, w=_what: _gemma_model(hf, w), _gemma_params,
                                  ("rotary_emb",)))


# gpt-oss ---------------------------------------------------------------------------------

def _gpt_oss_model(hf):
  what = "gpt-oss"
  d, heads = _need(hf, "hidden_size", what), _need(hf, "num_attention_heads", what)
  kv_heads = _valid(hf, "num_key_value_heads", what) or heads
  head_dim = _valid(hf, "head_dim", what) or d // heads
  max_len = _need(hf, "max_position_embeddings", what)
  quantization = (hf.get("quantization_config") or {}).get("quant_method")
  _refuse(quantization is not None, f"{what}: quantized weights ({quantization}) are not "
          f"supported; dequantize the checkpoint to bfloat16 or float32 first "
          f"(transformers: from_pretrained(..., dequantize=True), then save_pretrained)")
  _refuse(not hf.get("attention_bias", True), f"{what}: attention_bias=False is not supported "
          f"(gpt-oss has q/k/v/o biases)")
  _refuse(hf.get("hidden_act", "silu") != "silu", f"{what}: hidden_act="
          f"{hf.get('hidden_act')!r} is not supported; gpt-oss's experts use its clamped SiLU")
  experts = _need(hf, "num_local_experts", what)
  model = {"num_layers": _need(hf, "num_hidden_layers", what), "d_model": d,
           "head_dim": head_dim if head_dim != d // heads or d % heads else 0,
           "attention": {"num_heads": heads, "num_kv_heads": kv_heads,
                         "sink_logit": "learned"},
           "mlp": "moe", "mlp_hidden": _need(hf, "intermediate_size", what),
           "moe_experts": experts, "moe_top_k": _need(hf, "num_experts_per_tok", what),
           "moe_router": "softmax_topk", "moe_expert": "clamped_swiglu", "moe_bias": True,
           "moe_swiglu_limit": float(hf.get("swiglu_limit", 7.0)),
           "moe_swiglu_alpha": float(hf.get("swiglu_alpha", 1.702)),
           "norm": "rmsnorm", "norm_eps": hf.get("rms_norm_eps", 1e-5), "use_bias": True,
           "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
           "position": _rope(hf, head_dim, max_len, what)}
  _merge_dict(model, _schedule(hf, what, _sliding_layers(hf, what), [True] * model["num_layers"]))
  return model, max_len


def _gpt_oss_params(t, hf, m):
  p = ("model.", "")
  d, f, e = m.d_model, m.mlp_hidden, m.moe_experts
  heads, kv_heads = m.attention.num_heads, m.attention.num_kv_heads
  dh = m.head_dim or d // heads
  params = _embedding_and_head(t, m, p)
  for i in range(m.num_layers):
    x = f"layers.{i}."
    # experts' gate and linear halves interleave along the last axis: gate 0, up 0, gate 1, ...
    gate_up = t.take(x + "mlp.experts.gate_up_proj", (e, d, 2 * f), p)
    gate_up_bias = t.take(x + "mlp.experts.gate_up_proj_bias", (e, 2 * f), p)
    params[f"block_{i}"] = {
        "norm_attention": _norm(t, x + "input_layernorm", d, False, p),
        "attention": {"qkv": _qkv(t, x, d, heads, kv_heads, dh, True, p),
                      "out": _linear(t, x + "self_attn.o_proj", heads * dh, d, True, p),
                      "sinks": t.take(x + "self_attn.sinks", (heads,), p)},
        "norm_mlp": _norm(t, x + "post_attention_layernorm", d, False, p),
        "mlp": {"router": t.take(x + "mlp.router.weight", (e, d), p).T,
                "router_bias": t.take(x + "mlp.router.bias", (e,), p),
                "gate": gate_up[..., 0::2], "up": gate_up[..., 1::2],
                "gate_bias": gate_up_bias[..., 0::2], "up_bias": gate_up_bias[..., 1::2],
                "down": t.take(x + "mlp.experts.down_proj", (e, f, d), p),
                "down_bias": t.take(x + "mlp.experts.down_proj_bias", (e, d), p)}}
  return params


FAMILIES.register("gpt_oss")(Family(_gpt_oss_model, _gpt_oss_params, ("rotary_emb",)))


# BLOOM ---------------------------------------------------------------------------------

BLOOM_CONTEXT = 2048   # BLOOM's training length; its config.json does not state it


def _bloom_model(hf):
  what = "BLOOM"
  _refuse(hf.get("apply_residual_connection_post_layernorm", False),
          f"{what}: apply_residual_connection_post_layernorm=True is not supported")
  d = _valid(hf, "n_embed", what) or _need(hf, "hidden_size", what)
  heads = _valid(hf, "n_head", what) or _need(hf, "num_attention_heads", what)
  model = {"num_layers": _valid(hf, "n_layer", what) or _need(hf, "num_hidden_layers", what),
           "d_model": d,
           "attention": {"num_heads": heads, "num_kv_heads": heads},
           "mlp": "gelu", "mlp_hidden": 4 * d, "norm": "layernorm",
           "norm_eps": hf.get("layer_norm_epsilon", 1e-5), "use_bias": True, "embed_norm": True,
           "tie_embeddings": True, "position": {"kind": "alibi"}}
  return model, _valid(hf, "seq_length", what, BLOOM_CONTEXT)


def _bloom_params(t, hf, m):
  p = ("transformer.", "")
  d = m.d_model
  params = {"embed": {"embedding": t.take("word_embeddings.weight", (m.vocab_size, d), p)},
            "norm_embed": _norm(t, "word_embeddings_layernorm", d, True, p),
            "norm_final": _norm(t, "ln_f", d, True, p)}
  params.update(_head(t, m, "lm_head.weight", ("",), params["embed"]["embedding"]))
  for i in range(m.num_layers):
    params[f"block_{i}"] = _fused_qkv_block(t, m, f"h.{i}.", "self_attention", p)
  return params


FAMILIES.register("bloom")(Family(_bloom_model, _bloom_params))


# ----------------------------------------------------------------------------- import


def _merge(base: ml_collections.ConfigDict, overrides: dict) -> None:
  for key, value in overrides.items():
    if isinstance(value, dict):
      _merge(base[key], value)
    else:
      base[key] = value


def _short(value, limit: int = 60) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit - 3] + "..."


def read_hf_config(directory: pathlib.Path) -> tuple[dict, Family, str]:
  """(config.json as a dict, its family, a name for messages) of a checkpoint directory."""
  path = directory / "config.json"
  if not path.is_file():
    raise HFImportError(f"--checkpoint={str(directory)!r} has no config.json (a Hugging Face "
                        f"checkpoint directory holds config.json, *.safetensors, tokenizer.json)")
  try:
    hf = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise HFImportError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(hf, dict):
    raise HFImportError(f"{path}: the top level is {type(hf).__name__} {_short(hf)}; valid: a "
                        f"JSON object of the model's settings (model_type, hidden_size, ...)")
  model_type = hf.get("model_type")
  architectures = hf.get("architectures") or []
  if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
    raise HFImportError(f"{path}: architectures={_short(architectures)} is not valid; valid: a "
                        f"list of class names such as ['LlamaForCausalLM']")
  for key in ("rope_scaling", "rope_parameters"):
    if hf.get(key) is not None and not isinstance(hf[key], dict):
      raise HFImportError(f"{path}: {key}={_short(hf[key])} is not valid; valid: an object "
                          f"(rope_type, factor, ...) or null")
  if not isinstance(model_type, str) or model_type not in FAMILIES.names():
    raise HFImportError(f"{path}: model_type {model_type!r} (architectures {architectures}) is not "
                        f"supported; supported: {', '.join(FAMILIES.names())}")
  heads = [a for a in architectures if not (a.endswith("ForCausalLM") or a.endswith("LMHeadModel")
                                            or a.endswith("Model"))]
  if heads:
    raise HFImportError(f"{path}: architecture {heads[0]!r} is not a causal language model; "
                        f"attnlab imports *ForCausalLM / *LMHeadModel checkpoints")
  return hf, FAMILIES.get(model_type), f"{model_type} checkpoint {directory}"


def convert(directory, base_config, dtype: str = "float32", with_shards: bool = False):
  """(resolved-able attnlab config, params) of the checkpoint in ``directory``, and with
  ``with_shards`` the safetensors files read (relative to ``directory``).

  ``base_config``: an lm config (``configs/lm.py``) whose data, train and eval blocks the
  imported config keeps; its model block is replaced. ``dtype``: ``float32`` (weights
  converted) or ``bfloat16`` (weights and compute in bfloat16).
  """
  directory = pathlib.Path(directory)
  hf, family, what = read_hf_config(directory)
  if dtype not in ("float32", "bfloat16"):
    raise ConfigError(f"--dtype={dtype!r} is not valid; valid: float32, bfloat16")
  try:
    overrides, seq_len = family.model(hf)
  except HFImportError:
    raise
  except (TypeError, ValueError, AttributeError, KeyError, ZeroDivisionError) as e:
    # a value of another type or range than the family's config.json has (the checks above
    # name the common ones); the mapping reads nothing else
    raise HFImportError(f"{directory / 'config.json'}: a value has the wrong type or range for "
                        f"{what} ({type(e).__name__}: {e})") from e
  cfg = ml_collections.ConfigDict(base_config.to_dict())
  position = overrides.pop("position")
  impl = cfg.model.attention.impl                # how attention runs is the user's choice
  cfg.model.attention = config_lib.attention_block()
  cfg.model.attention.impl = impl
  cfg.model.position = config_lib.position_block(position["kind"])
  _merge(cfg.model.position, position)
  _merge(cfg.model, {**overrides, "vocab_size": int(_need(hf, "vocab_size", what)),
                     "dropout": 0.0, "param_dtype": dtype, "dtype": dtype})
  tokenizer = directory / "tokenizer.json"
  if not tokenizer.is_file():
    raise HFImportError(f"--checkpoint={str(directory)!r} has no tokenizer.json")
  cfg.data.tokenizer = str(tokenizer.resolve())
  cfg.data.seq_len = int(seq_len)
  resolved = config_lib.resolve(cfg)         # a config attnlab cannot express fails here
  tensors = Tensors(directory, what)
  params = family.params(tensors, hf, resolved.model)
  unused = [n for n in tensors.unused() if not any(i in n for i in family.ignored)]
  if unused:
    raise HFImportError(f"{what}: {len(unused)} tensor(s) have no place in attnlab's "
                        f"{hf['model_type']} model, e.g. {unused[0]!r}; not imported")
  expected = jax.eval_shape(lambda: build_lm(resolved.model).init(
      jax.random.PRNGKey(0), np.zeros((1, 2), np.int32)))["params"]
  got = jax.tree_util.tree_structure(params)
  if got != jax.tree_util.tree_structure(expected):
    raise HFImportError(f"{what}: the mapped parameters do not form attnlab's tree "
                        f"(got {got}, expected {jax.tree_util.tree_structure(expected)})")
  for (path, x), e in zip(jax.tree_util.tree_leaves_with_path(params),
                          jax.tree_util.tree_leaves(expected)):
    if x.shape != e.shape:
      raise HFImportError(f"{what}: parameter {jax.tree_util.keystr(path)} has shape "
                          f"{x.shape}; attnlab's model needs {e.shape}")
  cast = jax.numpy.bfloat16 if dtype == "bfloat16" else jax.numpy.float32
  params = jax.tree.map(lambda x: jax.numpy.asarray(x, cast), params)
  return (cfg, params, list(tensors.shards)) if with_shards else (cfg, params)


def _sha256(path: pathlib.Path) -> str:
  import hashlib
  with open(path, "rb") as f:
    return hashlib.file_digest(f, "sha256").hexdigest()


def import_checkpoint(directory, workdir, base_config, dtype: str = "float32") -> dict:
  """Write an attnlab workdir for the checkpoint in ``directory``; returns ``import.json``."""
  directory, workdir = pathlib.Path(directory), pathlib.Path(workdir)
  if not directory.is_dir():
    raise HFImportError(f"--checkpoint={str(directory)!r} is not a directory")
  if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
    raise workdir_lib.WorkdirError(f"--workdir={str(workdir)!r} is not empty; import into a new "
                                   f"directory")
  cfg, params, shards = convert(directory, base_config, dtype, with_shards=True)
  # every file read (config, tokenizer, index, each shard wherever in the folder it is) and
  # the other top-level .json / .safetensors files, by their path relative to the folder
  names = {p.name for p in directory.iterdir() if p.is_file()
           and p.suffix in (".json", ".safetensors")} | set(shards)
  record = {"source": str(directory.resolve()), "model_type": json.loads(
      (directory / "config.json").read_text())["model_type"], "dtype": dtype,
      "files": {name: _sha256(directory / name) for name in sorted(names)}}
  # built aside and renamed into place: a failed import leaves no partial workdir
  with outputs.staged_directory(workdir) as building:
    shutil.copyfile(directory / "tokenizer.json", building / "tokenizer.json")
    cfg.data.tokenizer = "tokenizer.json"    # relative: read from the workdir, wherever it is
    workdir_lib.atomic_write(building / "config.json", workdir_lib.config_json(cfg))
    checkpointer = workdir_lib.Checkpointer(building / "checkpoints", 1)
    try:
      checkpointer.save(0, {"step": np.zeros((), np.int32), "params": params})
    finally:
      checkpointer.close()
    workdir_lib.atomic_write(building / "import.json",
                             json.dumps(record, indent=2, sort_keys=True))
  return record
