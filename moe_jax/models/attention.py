"""Causal multi-head self-attention with optional rotary positions."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.layers.params import param


def rotary(x: jax.Array, positions: jax.Array, base: float = 10000.0):
  """Rotary position embedding (Su et al. 2021) on x [B, L, H, Dh].

  Rotates pairs (x_i, x_{i+Dh/2}) by angle position·base^(-2i/Dh), so the
  query-key dot product depends only on the relative position.
  """
  half = x.shape[-1] // 2
  freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[:, None].astype(jnp.float32) * freq  # [L, Dh/2]
  sin = jnp.sin(angle)[None, :, None, :].astype(x.dtype)
  cos = jnp.cos(angle)[None, :, None, :].astype(x.dtype)
  x1, x2 = x[..., :half], x[..., half:]
  return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class CausalSelfAttention(nnx.Module):
  """Multi-head attention where position i attends to positions <= i."""

  def __init__(self, d_model: int, num_heads: int, *, rope: bool,
               init_scale: float, rngs: nnx.Rngs, dtype=jnp.float32):
    h, dh = num_heads, d_model // num_heads
    self.rope = rope
    self.dtype = dtype
    # [D, H, Dh]: fan-in is D (axis 0); heads and head width are fan-out.
    qkv_init = nnx.initializers.variance_scaling(
        init_scale, 'fan_in', 'truncated_normal', in_axis=0, out_axis=(1, 2))
    axes = ('embed', 'heads', 'kv')
    self.wq = param(rngs, qkv_init, (d_model, h, dh), axes)
    self.wk = param(rngs, qkv_init, (d_model, h, dh), axes)
    self.wv = param(rngs, qkv_init, (d_model, h, dh), axes)
    out_init = nnx.initializers.variance_scaling(
        init_scale, 'fan_in', 'truncated_normal', in_axis=(0, 1), out_axis=2)
    self.wo = param(rngs, out_init, (h, dh, d_model), ('heads', 'kv', 'embed'))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, L, D] -> [B, L, D]."""
    dt = self.dtype
    x = x.astype(dt)
    q = jnp.einsum('bld,dhk->blhk', x, self.wq[...].astype(dt))
    k = jnp.einsum('bld,dhk->blhk', x, self.wk[...].astype(dt))
    v = jnp.einsum('bld,dhk->blhk', x, self.wv[...].astype(dt))
    length = x.shape[1]
    if self.rope:
      positions = jnp.arange(length)
      q, k = rotary(q, positions), rotary(k, positions)
    scores = jnp.einsum('blhk,bmhk->bhlm', q, k) / jnp.sqrt(q.shape[-1]).astype(dt)
    causal = jnp.tril(jnp.ones((length, length), bool))
    # Softmax in float32: bf16 exponentials lose too much for long rows.
    scores = jnp.where(causal, scores.astype(jnp.float32), -1e30)
    weights = jax.nn.softmax(scores, axis=-1).astype(dt)
    out = jnp.einsum('bhlm,bmhk->blhk', weights, v)
    return jnp.einsum('blhk,hkd->bld', out, self.wo[...].astype(dt))
