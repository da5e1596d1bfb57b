"""Causal self-attention (multi-head or grouped-query) with optional rotary
positions, sliding window, QK-norm, attention sinks and biases."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.layers.params import param
from moe_jax.models.norm import qk_norm as make_qk_norm
from moe_jax.models.yarn import YarnConfig


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0,
           scaling: YarnConfig | None = None):
  """Rotary position embedding (Su et al. 2021) on x [B, L, H, Dh].

  positions: [L] (every sequence at the same positions, as in training) or
  [B, L] (each sequence its own: cached decoding, where rows of a batch
  stand at different lengths).

  Rotates pairs (x_i, x_{i+Dh/2}) by angle position·base^(-2i/Dh), so the
  query-key dot product depends only on the relative position. This is the
  "rotate half" layout of Hugging Face's Llama/Mixtral code, not the
  interleaved pairs (x_{2i}, x_{2i+1}) of the original paper, so their q/k
  weights load without a permutation.

  scaling: YaRN (models/yarn.py): its frequencies, and sin and cos scaled by
  its attention factor, as transformers scales them.
  """
  half = x.shape[-1] // 2
  if scaling is None:
    freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  else:  # Static: computed once in float64 when traced.
    freq = jnp.asarray(scaling.inv_freq(2 * half, base), jnp.float32)
  angle = positions[..., None].astype(jnp.float32) * freq  # [(B,) L, Dh/2]
  sin, cos = jnp.sin(angle), jnp.cos(angle)
  if scaling is not None:
    sin, cos = sin * scaling.rope_factor, cos * scaling.rope_factor
  # A heads axis, so [L, 1, Dh/2] or [B, L, 1, Dh/2] broadcasts against x.
  sin = sin[..., None, :].astype(x.dtype)
  cos = cos[..., None, :].astype(x.dtype)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


def softmax_with_sinks(scores: jax.Array, sinks: jax.Array | None):
  """softmax over the last axis of float32 scores, with a sink logit.

  A sink (gpt-oss; Xiao et al. 2023's attention sinks, learned) is one more
  logit per head in the softmax's denominator that has no value: the
  weights over the real keys sum to 1 / (1 + e^{s - logsumexp(scores)}) < 1,
  so a head can attend to nothing. sinks: None (plain softmax), or float
  logits broadcastable to scores[..., :1] (one per head).
  """
  if sinks is None:
    return jax.nn.softmax(scores, axis=-1)
  sink = jnp.broadcast_to(sinks.astype(scores.dtype), scores[..., :1].shape)
  return jax.nn.softmax(jnp.concatenate([scores, sink], -1), axis=-1)[..., :-1]


class CausalSelfAttention(nnx.Module):
  """Attention where position i attends to positions <= i.

  With num_kv_heads < num_heads it is grouped-query attention (Ainslie et
  al. 2023): each of the Hkv key/value heads serves num_heads / Hkv
  consecutive query heads (query head h reads kv head h // R), the grouping
  Hugging Face's repeat_kv uses.

  head_dim: Dh when it is not D / H (Qwen3); qk_norm: None, 'per_head' or
  'all_heads' (models/norm.py), with ε = norm_eps; rope_scaling: YaRN
  (models/yarn.py) or None. sinks: a learned logit per head in the softmax
  (softmax_with_sinks; gpt-oss); out_bias: a bias on the output projection
  (gpt-oss, with qkv_bias).
  """

  def __init__(self, d_model: int, num_heads: int, *, rope: bool,
               init_scale: float, rngs: nnx.Rngs, dtype=jnp.float32,
               num_kv_heads: int | None = None, rope_theta: float = 10000.0,
               qkv_bias: bool = False, sliding_window: int | None = None,
               head_dim: int | None = None, qk_norm: str | None = None,
               norm_eps: float = 1e-6, rope_scaling: YarnConfig | None = None,
               sinks: bool = False, out_bias: bool = False):
    h, dh = num_heads, head_dim or d_model // num_heads
    hkv = num_kv_heads or num_heads
    # W: position i attends to j with i - W < j <= i (Mistral/Mixtral's
    # sliding window, as transformers masks it); None: all j <= i.
    self.sliding_window = sliding_window
    self.rope = rope
    self.rope_theta = rope_theta
    self.rope_scaling = rope_scaling
    self.dtype = dtype
    self.qkv_bias = qkv_bias
    # [D, H, Dh]: fan-in is D (axis 0); heads and head width are fan-out.
    qkv_init = nnx.initializers.variance_scaling(
        init_scale, 'fan_in', 'truncated_normal', in_axis=0, out_axis=(1, 2))
    axes = ('embed', 'heads', 'kv')
    self.wq = param(rngs, qkv_init, (d_model, h, dh), axes)
    self.wk = param(rngs, qkv_init, (d_model, hkv, dh), axes)
    self.wv = param(rngs, qkv_init, (d_model, hkv, dh), axes)
    if qkv_bias:  # Qwen2-MoE has biases on q, k and v (not on the output).
      zeros = nnx.initializers.zeros
      self.bq = param(rngs, zeros, (h, dh), ('heads', 'kv'))
      self.bk = param(rngs, zeros, (hkv, dh), ('heads', 'kv'))
      self.bv = param(rngs, zeros, (hkv, dh), ('heads', 'kv'))
    out_init = nnx.initializers.variance_scaling(
        init_scale, 'fan_in', 'truncated_normal', in_axis=(0, 1), out_axis=2)
    self.wo = param(rngs, out_init, (h, dh, d_model), ('heads', 'kv', 'embed'))
    self.out_bias = out_bias
    if out_bias:
      self.bo = param(rngs, nnx.initializers.zeros, (d_model,), ('embed',))
    # One logit per query head; 0 at init (as if one more key scored 0).
    self.has_sinks = sinks
    if sinks:
      self.sinks = param(rngs, nnx.initializers.zeros, (h,), ('heads',))
    # RMSNorm of q and k after the projection, before RoPE (OLMoE: over all
    # heads at once; Qwen3: per head); models/norm.py.
    self.qk_norm = qk_norm
    if qk_norm is not None:
      self.q_norm = make_qk_norm(qk_norm, h, dh, rngs=rngs, eps=norm_eps)
      self.k_norm = make_qk_norm(qk_norm, hkv, dh, rngs=rngs, eps=norm_eps)

  def _project(self, x, name):
    y = jnp.einsum('bld,dhk->blhk', x, getattr(self, 'w' + name)[...].astype(
        self.dtype))
    if self.qkv_bias:
      y = y + getattr(self, 'b' + name)[...].astype(self.dtype)
    return y

  def _qkv(self, x):
    """x [B, L, D] -> q [B, L, H, Dh], k and v [B, L, Hkv, Dh], before RoPE."""
    q, k, v = (self._project(x, n) for n in 'qkv')
    if self.qk_norm is not None:
      q, k = self.q_norm(q), self.k_norm(k)
    return q, k, v

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, L, D] -> [B, L, D]."""
    dt = self.dtype
    x = x.astype(dt)
    q, k, v = self._qkv(x)  # [B, L, H or Hkv, Dh]
    length = x.shape[1]
    if self.rope:
      positions = jnp.arange(length)
      q = rotary(q, positions, self.rope_theta, self.rope_scaling)
      k = rotary(k, positions, self.rope_theta, self.rope_scaling)
    group = q.shape[2] // k.shape[2]
    if group > 1:  # GQA: copy each kv head to the R query heads it serves.
      k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum('blhk,bmhk->bhlm', q, k) / jnp.sqrt(q.shape[-1]).astype(dt)
    causal = jnp.tril(jnp.ones((length, length), bool))
    if self.sliding_window is not None:  # Also j > i - W.
      causal = causal & jnp.triu(jnp.ones((length, length), bool),
                                 1 - self.sliding_window)
    # Softmax in float32: bf16 exponentials lose too much for long rows.
    scores = jnp.where(causal, scores.astype(jnp.float32), -1e30)
    sinks = self.sinks[...][:, None, None] if self.has_sinks else None
    weights = softmax_with_sinks(scores, sinks).astype(dt)
    out = jnp.einsum('bhlm,bmhk->blhk', weights, v)
    return self._out(out)

  def _out(self, out):
    """Heads [B, L, H, Dh] -> [B, L, D] through wo (and its bias)."""
    dt = self.dtype
    y = jnp.einsum('blhk,hkd->bld', out, self.wo[...].astype(dt))
    return y + self.bo[...].astype(dt) if self.out_bias else y

  def cached(self, x: jax.Array, positions: jax.Array, k_cache: jax.Array,
             v_cache: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Attention of new tokens over a KV cache, for incremental decoding.

    Slot j of a row's cache holds the key and value of that sequence's
    token at absolute position j. The new tokens' keys and values are
    written at their positions first, then each new token attends to the
    slots at positions <= its own. That mask is the causal mask and the
    padding mask at once when prompts are right-padded: every slot below a
    real token's position holds an earlier real token of its sequence, and
    a pad's slot lies above every real position until a generated token
    overwrites it (moe_jax/generation/decode.py).

    Args:
      x: [B, L, D] the new tokens (L = prompt length at prefill, 1 after).
      positions: int [B, L] their absolute positions (< Lmax).
      k_cache, v_cache: [B, Lmax, Hkv, Dh], the kv heads only (GQA's
        repeated copies are never stored).

    Returns:
      (y [B, L, D], k_cache, v_cache) with the new keys and values written.
    """
    dt = self.dtype
    x = x.astype(dt)
    q, k, v = self._qkv(x)  # [B, L, H or Hkv, Dh]
    if self.rope:  # At each token's own position, not its index in x.
      q = rotary(q, positions, self.rope_theta, self.rope_scaling)
      k = rotary(k, positions, self.rope_theta, self.rope_scaling)
    rows = jnp.arange(x.shape[0])[:, None]  # [B, 1]
    k_cache = k_cache.at[rows, positions].set(k.astype(k_cache.dtype))
    v_cache = v_cache.at[rows, positions].set(v.astype(v_cache.dtype))
    b, length, h, dh = q.shape
    hkv = k_cache.shape[2]
    # Query head h reads kv head h // R (as repeat_kv does in __call__), so
    # the R query heads of a kv head are consecutive: g = h // R, r = h % R.
    qg = q.reshape(b, length, hkv, h // hkv, dh)
    scores = jnp.einsum('blgrk,bmgk->bgrlm', qg, k_cache.astype(dt)
                        ) / jnp.sqrt(dh).astype(dt)
    slots = jnp.arange(k_cache.shape[1])
    visible = slots[None, None, :] <= positions[:, :, None]  # [B, L, Lmax]
    if self.sliding_window is not None:  # The cache keeps every slot; the
      # window only masks those older than W positions.
      visible &= slots[None, None, :] > positions[:, :, None] - (
          self.sliding_window)
    scores = jnp.where(visible[:, None, None], scores.astype(jnp.float32),
                       -1e30)
    sinks = (self.sinks[...].reshape(hkv, h // hkv)[:, :, None, None]
             if self.has_sinks else None)  # Query head g·R + r's, as above.
    weights = softmax_with_sinks(scores, sinks).astype(dt)
    out = jnp.einsum('bgrlm,bmgk->blgrk', weights, v_cache.astype(dt))
    return self._out(out.reshape(b, length, h, dh)), k_cache, v_cache
