"""Sub-quadratic attention kinds whose function differs from softmax attention.

Three pure functions, layout ``[batch, seq, heads, head_dim]``, float32 inside,
output in q's dtype; all jit-able and differentiable in q, k, v:

- ``lsh_attention``: Reformer (Kitaev et al. 2020) shared-QK attention restricted
  to the keys that angular LSH puts near each query after sorting by bucket.
- ``performer_attention``: FAVOR+ (Choromanski et al. 2021), an unbiased
  positive-random-feature estimate of softmax attention.
- ``linear_attention``: Katharopoulos et al. 2020, the kernel ``elu(x) + 1``.

None of them builds an ``[N, N]`` matrix. LSH scores are
``[..., N / chunk, chunk, 2 * chunk]``; the kernel methods use ``[N, m]``
features and, when causal, a ``lax.scan`` over chunks that carries the running
sums ``S = sum_j phi(k_j) v_j^T`` ``[m, Dv]`` and ``z = sum_j phi(k_j)`` ``[m]``.

GQA/MQA (kernel methods): k, v may have ``Hkv`` heads dividing ``H``; query
head ``h`` uses key/value head ``h // (H // Hkv)``, by grouping, never copying.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax

_F32 = jnp.float32

# LSH: the logit a query gives itself (after scaling). Far below any real logit,
# so self gets ~zero weight when another key is visible, and all of it when not.
SELF_LOGIT = -1e5
# LSH: the logit of an invisible key (masked or padding): exp(MASKED - SELF) == 0.
MASKED_LOGIT = -1e9
# FAVOR+: added to every *query* feature so phi(q) is positive. Keys get none: each key's
# scale is carried separately (``favor_key_features``), and an eps there would not scale
# with it.
FEATURE_EPS = 1e-6


def _einsum(spec, *operands):
  """float32 einsum at full precision (no TF32/bf16 passes on accelerators)."""
  return jnp.einsum(spec, *operands, precision=lax.Precision.HIGHEST,
                    preferred_element_type=_F32)


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


def _pad_axis(x, length: int, axis: int, value=0):
  """Pads ``axis`` of x at the end up to ``length`` with ``value``."""
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


# ----------------------------------------------------------------------------- validation


def _check_positive_int(name: str, value) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1; got {value!r}")


def _check_scale(scale) -> None:
  if scale is not None and not float(scale) > 0:
    raise ValueError(f"scale must be > 0 (or None for 1/sqrt(head_dim)); got {scale!r}")


def _check_qkv(q, k, v) -> None:
  """q: [B, N, H, D]; k: [B, N, Hkv, D]; v: [B, N, Hkv, Dv] with Hkv dividing H."""
  if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
    raise ValueError(f"q, k, v must be [batch, seq, heads, head_dim]; got shapes "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if k.shape[:3] != v.shape[:3]:
    raise ValueError(f"k and v must agree in batch, seq and heads; got {k.shape} and {v.shape}")
  if q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
    raise ValueError(f"q and k must agree in batch, seq and head_dim; got {q.shape} and {k.shape}")
  if q.shape[2] % k.shape[2]:
    raise ValueError(f"kv heads ({k.shape[2]}) must divide query heads ({q.shape[2]}) for GQA/MQA")


# ----------------------------------------------------------------------------- LSH (Reformer)


def lsh_rotations(key, *, num_hashes: int, num_heads: int, dim: int, num_buckets: int):
  """Random rotations, float32 ``[num_hashes, num_heads, dim, num_buckets // 2]``.

  One independent Gaussian matrix per hash round *and per head*, shared over the
  batch. ``num_buckets == 1`` gives a last axis of size 0 (no hashing).
  """
  return jax.random.normal(key, (num_hashes, num_heads, dim, num_buckets // 2), _F32)


def lsh_buckets(x, rotations):
  """Angular LSH buckets, int32 ``[R, B, H, N]``.

  x: [B, N, H, D]; rotations: [R, H, D, nb/2] (``lsh_rotations``).
  bucket = argmax([x R ; -x R]) (scale-invariant, so x need not be unit length);
  with ``nb/2 == 0`` (one bucket) every token is in bucket 0.
  """
  b, n, h, _ = x.shape
  r = rotations.shape[0]
  if rotations.shape[-1] == 0:
    return jnp.zeros((r, b, h, n), jnp.int32)
  proj = _einsum("bnhd,rhdk->rbhnk", x.astype(_F32), rotations.astype(_F32))
  return jnp.argmax(jnp.concatenate([proj, -proj], axis=-1), axis=-1).astype(jnp.int32)


def _unit(x):
  """x / ||x|| over the last axis (norm floored at 1e-6 so 0 stays finite)."""
  return x * lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-12))


def _with_previous_chunk(x, axis: int):
  """Concatenates each chunk with the one before it along ``axis + 1``.

  x: [..., nc, c, ...] with the chunk axis at ``axis`` -> [..., nc, 2c, ...]
  (own chunk first). Chunk 0's "previous" is the last chunk (wrapped); callers mask it.
  """
  return jnp.concatenate([x, jnp.roll(x, 1, axis=axis)], axis=axis + 1)


def _lsh_sort_order(qf, key, num_buckets: int, num_hashes: int):
  """Each round's stable order by (bucket, position): int32 ``[R, B, H, N]`` token indices.

  qf: float32 [B, N, H, D]; rotations from ``lsh_rotations(key, ...)`` (one per round and
  head); buckets are not differentiated.
  """
  _, n, h, d = qf.shape
  rotations = lsh_rotations(key, num_hashes=num_hashes, num_heads=h, dim=d,
                            num_buckets=num_buckets)
  buckets = lax.stop_gradient(lsh_buckets(qf, rotations))                # [R, B, H, N]
  return jnp.argsort(buckets * n + jnp.arange(n, dtype=jnp.int32), axis=-1)  # unique keys


def _lsh_round_softmax(q, k, v, pos, n: int, chunk: int, scale: float, causal: bool):
  """Chunked attention of one or more rounds, in sorted order.

  q, k: [..., Np, D]; v: [..., Np, Dv]; pos: int32 [..., Np] (original positions,
  >= n for padding). Np is a multiple of ``chunk``.
  Returns out [..., Np, Dv] and the row log-sum-exp [..., Np] (float32).
  """
  lead, np_ = q.shape[:-2], q.shape[-2]
  nc = np_ // chunk
  split = lambda x: x.reshape(lead + (nc, chunk) + x.shape[len(lead) + 1:])
  qc, kc, vc, pc = split(q), split(k), split(v), split(pos)
  axis = len(lead)
  kk, vv, kpos = (_with_previous_chunk(x, axis) for x in (kc, vc, pc))   # [..., nc, 2c(, D)]
  first_chunk = (jnp.arange(nc) == 0)[:, None]
  kvalid = (kpos < n) & ~jnp.concatenate([jnp.zeros((nc, chunk), bool),
                                          jnp.broadcast_to(first_chunk, (nc, chunk))], axis=-1)
  s = _einsum("...qd,...kd->...qk", qc, kk) * scale                     # [..., nc, c, 2c]
  qp, kp = pc[..., :, None], kpos[..., None, :]
  visible = kvalid[..., None, :]
  if causal:
    visible = visible & (kp <= qp)
  s = jnp.where(kp == qp, SELF_LOGIT, s)
  s = jnp.where(visible, s, MASKED_LOGIT)
  m = lax.stop_gradient(s.max(axis=-1, keepdims=True))
  p = jnp.exp(s - m)
  l = p.sum(axis=-1)
  out = _einsum("...qk,...kd->...qd", p, vv) / l[..., None]
  lse = m[..., 0] + jnp.log(l)
  merge = lambda x: x.reshape(lead + (np_,) + x.shape[len(lead) + 2:])
  return merge(out), merge(lse)


def _check_lsh(q, v, num_buckets, num_hashes, chunk_size, scale) -> None:
  if not isinstance(num_buckets, int) or isinstance(num_buckets, bool) or not (
      num_buckets == 1 or (num_buckets >= 2 and num_buckets % 2 == 0)):
    raise ValueError(f"num_buckets must be 1 or an even integer >= 2; got {num_buckets!r}")
  _check_positive_int("num_hashes", num_hashes)
  _check_positive_int("chunk_size", chunk_size)
  _check_scale(scale)
  if q.ndim != 4 or v.ndim != 4 or q.shape[:3] != v.shape[:3]:
    raise ValueError(f"q and v must be [batch, seq, heads, head_dim] with equal batch, seq and "
                     f"heads (shared-QK attention has no GQA); got {q.shape} and {v.shape}")


def lsh_attention(q, v, *, key, num_buckets: int = 8, num_hashes: int = 2, chunk_size: int = 64,
                  causal: bool = True, scale: float | None = None):
  """Reformer LSH attention with shared queries and keys.

  Keys are the queries at unit length, ``k_j = q_j / ||q_j||``, and the logit is
  ``scale * q_i . k_j``. In each of ``num_hashes`` rounds, tokens are hashed into
  ``num_buckets`` buckets (``lsh_buckets``, rotations from ``lsh_rotations(key, ...)``:
  one per round and head, shared over the batch), stably sorted by
  (bucket, position), and cut into chunks of ``chunk_size`` (the last one padded);
  each chunk attends to itself and the chunk before it (chunk 0 to itself only).
  ``causal``: query i sees keys j <= i. A query's logit to itself is
  ``SELF_LOGIT`` (-1e5), so it attends to itself only when nothing else is visible.

  Rounds are combined by their row log-sum-exps,
  ``out_i = sum_r softmax_r(lse_{r,i}) out_{r,i}``: softmax attention over the
  multiset union of every round's visible keys (a key seen in two rounds counts twice).

  Args:
    q: [B, N, H, D] queries (and, normalised, keys).
    v: [B, N, H, Dv].
    key: PRNG key of the random rotations.
  Returns:
    [B, N, H, Dv] in q's dtype.
  """
  _check_lsh(q, v, num_buckets, num_hashes, chunk_size, scale)
  b, n, h, d = q.shape
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  chunk = min(chunk_size, n)
  np_ = _round_up(n, chunk)
  qf = q.astype(_F32)
  perm = _lsh_sort_order(qf, key, num_buckets, num_hashes)              # [R, B, H, N]
  inv = jnp.argsort(perm, axis=-1)

  def sort(x):  # [B, N, H, D] -> [R, B, H, Np, D] in each round's sorted order, zero padded
    x = jnp.broadcast_to(x.transpose(0, 2, 1, 3)[None], perm.shape + x.shape[-1:])
    return _pad_axis(jnp.take_along_axis(x, perm[..., None], axis=-2), np_, axis=-2)

  pos = jnp.concatenate([perm, jnp.broadcast_to(jnp.arange(n, np_, dtype=perm.dtype),
                                                perm.shape[:-1] + (np_ - n,))], axis=-1)
  out, lse = _lsh_round_softmax(sort(qf), sort(_unit(qf)), sort(v.astype(_F32)), pos, n, chunk,
                                scale, causal)
  out = jnp.take_along_axis(out[..., :n, :], inv[..., None], axis=-2)   # [R, B, H, N, Dv]
  lse = jnp.take_along_axis(lse[..., :n], inv, axis=-1)                 # [R, B, H, N]
  weights = jax.nn.softmax(lse, axis=0)
  out = jnp.sum(weights[..., None] * out, axis=0)                       # [B, H, N, Dv]
  return out.transpose(0, 2, 1, 3).astype(q.dtype)


# ----------------------------------------------------------------------------- kernel attention


def _group(phi_q, kv_heads: int):
  """[B, N, H, m] -> [B, N, Hkv, G, m] (query head h = kv head h // G)."""
  b, n, h, m = phi_q.shape
  return phi_q.reshape(b, n, kv_heads, h // kv_heads, m)


def _kernel_attention(phi_q, phi_k, v, eps: float):
  """Bidirectional ``phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1 + eps)``.

  phi_q: [B, N, H, m]; phi_k: [B, N, Hkv, m]; v: [B, N, Hkv, Dv] -> [B, N, H, Dv] f32.
  """
  b, n, h, _ = phi_q.shape
  pq = _group(phi_q, phi_k.shape[2])
  kv = _einsum("bnhm,bnhd->bhmd", phi_k, v)
  z = phi_k.sum(axis=1)
  num = _einsum("bnhgm,bhmd->bnhgd", pq, kv)
  den = _einsum("bnhgm,bhm->bnhg", pq, z) + eps
  return (num / den[..., None]).reshape(b, n, h, v.shape[-1])


def _causal_kernel_attention(phi_q, phi_k, v, chunk_size: int, eps: float, key_log_scale=None):
  """Causal ``out_i = phi(q_i)^T S_i / (phi(q_i)^T z_i + eps)``, S_i, z_i summed over j <= i.

  phi_q: [B, N, H, m]; phi_k: [B, N, Hkv, m]; v: [B, N, Hkv, Dv] -> [B, N, H, Dv] f32.
  A ``lax.scan`` over chunks of ``chunk_size`` carries S [B, Hkv, m, Dv] and
  z [B, Hkv, m]; within a chunk the masked ``[chunk, chunk]`` quadratic form adds
  the chunk's own keys. Memory O(N (m + Dv) + N chunk + m Dv); the backward pass also
  keeps one carried S per chunk, O(N m Dv / chunk). N is padded to a multiple of
  ``chunk_size`` with zero features (padded keys add nothing; padded rows are dropped).

  ``key_log_scale`` (float32 [B, N, Hkv], optional, no gradient): key j's features are
  ``phi_k[j] * exp(key_log_scale[j])``. The sums are then kept relative to the running
  maximum ``M_i = max_{j <= i} key_log_scale[j]`` (an online rescaling, as in flash
  attention's softmax), so no feature overflows or underflows because of a key the query
  may not see: query i's output depends only on keys j <= i of its own batch row and
  head, and its denominator is at least ``phi(q_i) . phi_k[argmax]`` > 0.
  """
  b, n, h, m = phi_q.shape
  hkv, dv = v.shape[2], v.shape[3]
  g = h // hkv
  c = min(chunk_size, n)
  np_ = _round_up(n, c)
  nc = np_ // c
  pq, pk, pv = (_pad_axis(x, np_, axis=1) for x in (phi_q, phi_k, v))
  pq = pq.reshape(b, nc, c, hkv, g, m).transpose(1, 0, 3, 4, 2, 5)   # [nc, B, Hkv, G, c, m]
  pk = pk.reshape(b, nc, c, hkv, m).transpose(1, 0, 3, 2, 4)         # [nc, B, Hkv, c, m]
  pv = pv.reshape(b, nc, c, hkv, dv).transpose(1, 0, 3, 2, 4)        # [nc, B, Hkv, c, Dv]
  scaled = key_log_scale is not None
  if scaled:
    pc = _pad_axis(lax.stop_gradient(key_log_scale.astype(_F32)), np_, axis=1, value=-jnp.inf)
    pc = pc.reshape(b, nc, c, hkv).transpose(1, 0, 3, 2)             # [nc, B, Hkv, c]
  else:
    pc = jnp.zeros((nc, b, hkv, c), _F32)
  lower = jnp.tril(jnp.ones((c, c), bool))

  def step(carry, chunk):
    s, z, m_prev = carry                                             # m_prev [B, Hkv]
    q_c, k_c, v_c, c_c = chunk
    a = _einsum("bhgqm,bhkm->bhgqk", q_c, k_c)
    if scaled:
      m_q = jnp.maximum(m_prev[..., None], lax.cummax(c_c, axis=c_c.ndim - 1))   # [B, Hkv, c]
      rel = jnp.where(lower, c_c[..., None, :] - m_q[..., :, None], -jnp.inf)    # <= 0
      a = a * jnp.exp(rel)[:, :, None]
      past = jnp.exp(m_prev[..., None] - m_q)[:, :, None, :]         # [B, Hkv, 1, c]
      m_new = jnp.maximum(m_prev, c_c.max(axis=-1))
      k_w = k_c * jnp.exp(c_c - m_new[..., None])[..., None]          # weights <= 1
      decay = jnp.exp(m_prev - m_new)
    else:
      a = jnp.where(lower, a, 0.0)
      past, m_new, k_w, decay = jnp.ones((), _F32), m_prev, k_c, None
    num = (_einsum("bhgqk,bhkd->bhgqd", a, v_c)
           + past[..., None] * _einsum("bhgqm,bhmd->bhgqd", q_c, s))
    den = a.sum(axis=-1) + past * _einsum("bhgqm,bhm->bhgq", q_c, z) + eps
    den = jnp.where(den == 0, 1.0, den)  # only padded rows (zero features) reach 0
    if decay is not None:
      s, z = s * decay[..., None, None], z * decay[..., None]
    s = s + _einsum("bhkm,bhkd->bhmd", k_w, v_c)
    z = z + k_w.sum(axis=-2)
    return (s, z, m_new), num / den[..., None]

  init = (jnp.zeros((b, hkv, m, dv), _F32), jnp.zeros((b, hkv, m), _F32),
          jnp.full((b, hkv), -jnp.inf if scaled else 0.0, _F32))
  _, out = lax.scan(step, init, (pq, pk, pv, pc))                    # [nc, B, Hkv, G, c, Dv]
  out = out.transpose(1, 0, 4, 2, 3, 5).reshape(b, np_, h, dv)
  return out[:, :n]


# ----------------------------------------------------------------------------- FAVOR+ (Performer)


def orthogonal_random_features(key, num_features: int, dim: int):
  """FAVOR+ projection, float32 ``[num_features, dim]``.

  ``ceil(num_features / dim)`` blocks of ``dim`` mutually orthogonal unit rows
  (Q of a Gaussian matrix's QR, signs fixed by diag(R) so Q is Haar-distributed),
  each row rescaled by the norm of an independent Gaussian dim-vector, so every
  row has the marginal of N(0, I); the first ``num_features`` rows are kept.
  """
  _check_positive_int("num_features", num_features)
  num_blocks = -(-num_features // dim)
  block_key, norm_key = jax.random.split(key)

  def block(k):
    qm, r = jnp.linalg.qr(jax.random.normal(k, (dim, dim), _F32))
    return (qm * jnp.sign(jnp.diagonal(r))[None, :]).T   # rows orthonormal

  rows = jax.vmap(block)(jax.random.split(block_key, num_blocks)).reshape(-1, dim)
  norms = jnp.linalg.norm(jax.random.normal(norm_key, (num_blocks * dim, dim), _F32), axis=-1)
  return (rows * norms[:, None])[:num_features]


def favor_features(x, w, *, is_query: bool, scale: float):
  """Positive random features ``phi(x) = (exp(w x' - ||x'||^2/2 - c) + eps) / sqrt(m)``.

  x: [..., D]; w: [m, D] -> [..., m] float32, with ``x' = scale**0.5 x`` so that
  E[phi(q) . phi(k)] = exp(scale q . k) (up to the constants c and eps).
  Stabiliser c (``stop_gradient``): for queries, the row max of ``w x' - ||x'||^2/2``
  (a per-query constant that cancels in attention's ratio); for keys, one max over the
  whole array (a shared constant: fine for the estimator, but in float32 keys far below
  it underflow; attention uses ``favor_key_features`` instead, which keeps each key's
  scale). ``eps = FEATURE_EPS`` (queries only) keeps every query feature positive.
  """
  xs = x.astype(_F32) * math.sqrt(scale)
  logits = _einsum("...d,md->...m", xs, w.astype(_F32))
  logits = logits - 0.5 * jnp.sum(xs * xs, axis=-1, keepdims=True)
  if is_query:
    c = logits.max(axis=-1, keepdims=True)
  else:
    c = logits.max()
  eps = FEATURE_EPS if is_query else 0.0
  return (jnp.exp(logits - lax.stop_gradient(c)) + eps) / math.sqrt(w.shape[0])


def favor_key_features(k, w, *, scale: float):
  """Key features in stabilised form ``(psi, c)`` with ``phi(k) = psi * exp(c)`` (same
  ``phi`` as ``favor_features`` without a shared constant):

  ``psi = exp(w k' - ||k'||^2/2 - c) / sqrt(m)`` (largest entry ``1 / sqrt(m)``) and
  ``c = max_m (w k' - ||k'||^2/2)`` per key, without gradient.
  k: [..., D]; w: [m, D] -> (float32 [..., m], float32 [...]).
  """
  ks = k.astype(_F32) * math.sqrt(scale)
  logits = _einsum("...d,md->...m", ks, w.astype(_F32))
  logits = logits - 0.5 * jnp.sum(ks * ks, axis=-1, keepdims=True)
  c = lax.stop_gradient(logits.max(axis=-1))
  return jnp.exp(logits - c[..., None]) / math.sqrt(w.shape[0]), c


def _scaled_key_features(psi, c, axis: int = 1):
  """Bidirectional: ``psi * exp(c - M)`` with M the max of c over the sequence of each
  (batch, head), so features are relative to that row's largest key (no other row's)."""
  return psi * jnp.exp(c - c.max(axis=axis, keepdims=True))[..., None]


def performer_attention(q, k, v, *, key, num_features: int = 256, causal: bool = False,
                        chunk_size: int = 128, scale: float | None = None):
  """FAVOR+ estimate of softmax attention ``softmax(scale q k^T) v``.

  Features are ``favor_features`` (queries) and ``favor_key_features`` (keys) with
  ``w = orthogonal_random_features(key, num_features, D)``, one projection shared by
  every head and batch element. Bidirectional: ``phi(Q) (phi(K)^T V) / (phi(Q) (phi(K)^T
  1))``; causal: the same with prefix sums, computed by a scan over chunks of
  ``chunk_size``. Each key's features carry their own scale ``exp(c_j)``, taken relative
  to the largest scale among the keys a query may see (its batch row and head; j <= i when
  causal), so float32 features never underflow or overflow because of another row or a
  later key, and no row's denominator is 0.

  Args:
    q: [B, N, H, D]; k: [B, N, Hkv, D]; v: [B, N, Hkv, Dv], Hkv dividing H.
    key: PRNG key of the random projection.
  Returns:
    [B, N, H, Dv] in q's dtype.
  """
  _check_qkv(q, k, v)
  _check_positive_int("num_features", num_features)
  _check_positive_int("chunk_size", chunk_size)
  _check_scale(scale)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  w = orthogonal_random_features(key, num_features, q.shape[-1])
  phi_q = favor_features(q, w, is_query=True, scale=scale)
  psi_k, c_k = favor_key_features(k, w, scale=scale)
  vf = v.astype(_F32)
  if causal:
    out = _causal_kernel_attention(phi_q, psi_k, vf, chunk_size, eps=0.0, key_log_scale=c_k)
  else:
    out = _kernel_attention(phi_q, _scaled_key_features(psi_k, c_k), vf, eps=0.0)
  return out.astype(q.dtype)


# ----------------------------------------------------------------------------- linear (elu + 1)


def elu_features(x):
  """``phi(x) = elu(x) + 1`` in float32 (positive), same shape as x."""
  return jax.nn.elu(x.astype(_F32)) + 1.0


def linear_attention(q, k, v, *, causal: bool = True, chunk_size: int = 128, eps: float = 1e-6):
  """Linear attention (Katharopoulos et al. 2020) with ``phi = elu + 1``.

  ``out_i = phi(q_i)^T sum_j phi(k_j) v_j^T / (phi(q_i)^T sum_j phi(k_j) + eps)``,
  the sums over all j (bidirectional) or j <= i (causal, a scan over chunks).

  Args:
    q: [B, N, H, D]; k: [B, N, Hkv, D]; v: [B, N, Hkv, Dv], Hkv dividing H.
  Returns:
    [B, N, H, Dv] in q's dtype.
  """
  _check_qkv(q, k, v)
  _check_positive_int("chunk_size", chunk_size)
  if not float(eps) >= 0:
    raise ValueError(f"eps must be >= 0; got {eps!r}")
  phi_q, phi_k, vf = elu_features(q), elu_features(k), v.astype(_F32)
  if causal:
    out = _causal_kernel_attention(phi_q, phi_k, vf, chunk_size, eps=float(eps))
  else:
    out = _kernel_attention(phi_q, phi_k, vf, eps=float(eps))
  return out.astype(q.dtype)


# ----------------------------------------------------------------------------- implied maps
#
# The functions above never build an [N, N] matrix. For analysis of short inputs the
# matrices they imply are built densely below: in each case ``weights @ v`` is the
# kind's output (an identity the tests check), so the map shows what the layer computes.


def lsh_attention_weights(q, *, key, num_buckets: int = 8, num_hashes: int = 2,
                          chunk_size: int = 64, causal: bool = True, scale: float | None = None):
  """The attention matrix ``lsh_attention`` applies, float32 ``[B, H, N, N]``.

  Round r lets query i see key j when j's place in the round's sorted order falls in
  i's chunk or the chunk before it (and j <= i when causal); over those keys it is a
  softmax of ``scale * q_i . k_j`` with ``SELF_LOGIT`` on the diagonal. Rounds are mixed
  by ``softmax_r(lse_{r,i})``, as in ``lsh_attention``. Rows sum to 1.
  """
  _check_lsh(q, q, num_buckets, num_hashes, chunk_size, scale)
  b, n, h, d = q.shape
  scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
  chunk = min(chunk_size, n)
  qf = q.astype(_F32)
  perm = _lsh_sort_order(qf, key, num_buckets, num_hashes)                # [R, B, H, N]
  chunk_of = jnp.argsort(perm, axis=-1) // chunk                           # [R, B, H, N]
  ci, cj = chunk_of[..., :, None], chunk_of[..., None, :]
  visible = (cj == ci) | ((cj == ci - 1) & (ci > 0))                      # [R, B, H, N, N]
  i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
  if causal:
    visible = visible & (j <= i)
  s = _einsum("bqhd,bkhd->bhqk", qf, _unit(qf)) * scale
  s = jnp.where(i == j, SELF_LOGIT, s)
  s = jnp.where(visible, s[None], MASKED_LOGIT)
  lse = jax.nn.logsumexp(s, axis=-1)                                       # [R, B, H, N]
  p = jnp.exp(s - lse[..., None])
  return jnp.sum(jax.nn.softmax(lse, axis=0)[..., None] * p, axis=0)


def _kernel_weights(phi_q, phi_k, causal: bool, eps: float):
  """``A_ij = phi(q_i).phi(k_j) / (sum_j' phi(q_i).phi(k_j') + eps)`` over visible keys.

  phi_q: [B, N, H, m]; phi_k: [B, N, Hkv, m] -> float32 [B, H, N, N].
  """
  phi_k = jnp.repeat(phi_k, phi_q.shape[2] // phi_k.shape[2], axis=2)
  a = _einsum("bqhm,bkhm->bhqk", phi_q, phi_k)
  if causal:
    a = jnp.where(jnp.tril(jnp.ones(a.shape[-2:], bool)), a, 0.0)
  den = a.sum(axis=-1, keepdims=True) + eps
  return a / jnp.where(den == 0, 1.0, den)


def performer_attention_weights(q, k, *, key, num_features: int = 256, causal: bool = False,
                                scale: float | None = None):
  """The attention matrix ``performer_attention`` applies (same features), ``[B, H, N, N]``."""
  _check_qkv(q, k, k)
  _check_positive_int("num_features", num_features)
  _check_scale(scale)
  scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
  w = orthogonal_random_features(key, num_features, q.shape[-1])
  phi_q = favor_features(q, w, is_query=True, scale=scale)
  psi_k, c_k = favor_key_features(k, w, scale=scale)
  g = q.shape[2] // k.shape[2]
  psi_k, c_k = jnp.repeat(psi_k, g, axis=2), jnp.repeat(c_k, g, axis=2)
  a = _einsum("bqhm,bkhm->bhqk", phi_q, psi_k)
  c = c_k.transpose(0, 2, 1)[:, :, None, :]                               # [B, H, 1, N]
  n = q.shape[1]
  visible = jnp.tril(jnp.ones((n, n), bool)) if causal else jnp.ones((n, n), bool)
  c = jnp.where(visible, c, -jnp.inf)                                      # [B, H, N, N]
  a = a * jnp.exp(c - c.max(axis=-1, keepdims=True))                       # 0 where invisible
  return a / a.sum(axis=-1, keepdims=True)


def linear_attention_weights(q, k, *, causal: bool = True, eps: float = 1e-6):
  """The attention matrix ``linear_attention`` applies, ``[B, H, N, N]``.

  Rows sum to ``1 - eps / (phi(q_i) . sum_j phi(k_j) + eps)``, i.e. 1 up to ``eps``.
  """
  _check_qkv(q, k, k)
  return _kernel_weights(elu_features(q), elu_features(k), causal, float(eps))
