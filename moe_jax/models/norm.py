"""RMSNorm (Zhang & Sennrich 2019): the residual stream's norm, and MLA's
latent norms (moe_jax/models/mla.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.layers.params import param


class RMSNorm(nnx.Module):
  """Root-mean-square norm (Zhang & Sennrich 2019), computed in float32."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6):
    self.eps = eps
    self.scale = param(rngs, nnx.initializers.ones, (dim,), ('embed',))

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(
        jnp.mean(jnp.square(x32), -1, keepdims=True) + self.eps)
    return (x32 * self.scale[...]).astype(x.dtype)
