"""Causal self-attention (multi-head or grouped-query) with optional rotary
positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.layers.params import param


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0):
  """Rotary position embedding (Su et al. 2021) on x [B, L, H, Dh].

  Rotates pairs (x_i, x_{i+Dh/2}) by angle position·base^(-2i/Dh), so the
  query-key dot product depends only on the relative position. This is the
  "rotate half" layout of Hugging Face's Llama/Mixtral code, not the
  interleaved pairs (x_{2i}, x_{2i+1}) of the original paper, so their q/k
  weights load without a permutation.
  """
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[:, None].astype(jnp.float32) * freq  # [L, Dh/2]
  sin = jnp.sin(angle)[None, :, None, :].astype(x.dtype)
  cos = jnp.cos(angle)[None, :, None, :].astype(x.dtype)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class CausalSelfAttention(nnx.Module):
  """Attention where position i attends to positions <= i.

  With num_kv_heads < num_heads it is grouped-query attention (Ainslie et
  al. 2023): each of the Hkv key/value heads serves num_heads / Hkv
  consecutive query heads (query head h reads kv head h // R), the grouping
  Hugging Face's repeat_kv uses.
  """

  def __init__(self, d_model: int, num_heads: int, *, rope: bool,
               init_scale: float, rngs: nnx.Rngs, dtype=jnp.float32,
               num_kv_heads: int | None = None, rope_theta: float = 10000.0,
               qkv_bias: bool = False):
    h, dh = num_heads, d_model // num_heads
    hkv = num_kv_heads or num_heads
    self.rope = rope
    self.rope_theta = rope_theta
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

  def _project(self, x, name):
    y = jnp.einsum('bld,dhk->blhk', x, getattr(self, 'w' + name)[...].astype(
        self.dtype))
    if self.qkv_bias:
      y = y + getattr(self, 'b' + name)[...].astype(self.dtype)
    return y

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, L, D] -> [B, L, D]."""
    dt = self.dtype
    x = x.astype(dt)
    q, k, v = (self._project(x, n) for n in 'qkv')  # [B, L, H or Hkv, Dh]
    length = x.shape[1]
    if self.rope:
      positions = jnp.arange(length)
      q = rotary(q, positions, self.rope_theta)
      k = rotary(k, positions, self.rope_theta)
    group = q.shape[2] // k.shape[2]
    if group > 1:  # GQA: copy each kv head to the R query heads it serves.
      k, v = jnp.repeat(k, group, axis=2), jnp.repeat(v, group, axis=2)
    scores = jnp.einsum('blhk,bmhk->bhlm', q, k) / jnp.sqrt(q.shape[-1]).astype(dt)
    causal = jnp.tril(jnp.ones((length, length), bool))
    # Softmax in float32: bf16 exponentials lose too much for long rows.
    scores = jnp.where(causal, scores.astype(jnp.float32), -1e30)
    weights = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum('bhlm,bmhk->blhk', weights, v)
    return jnp.einsum('blhk,hkd->bld', out, self.wo[...].astype(dt))
