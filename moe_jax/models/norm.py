"""RMSNorm (Zhang & Sennrich 2019), over one axis or several.

The residual stream normalises over D. QK-norm (OLMoE, Qwen3) normalises
the queries and keys before RoPE: Qwen3 over each head's Dh with one [Dh]
scale shared by the heads, OLMoE over the whole projection (all heads'
H·Dh at once) with an [H, Dh] scale.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.layers.params import param

# model.qk_norm -> which trailing axes of q/k [B, L, H, Dh] one norm spans.
QK_NORMS = {'per_head': 1, 'all_heads': 2}


class RMSNorm(nnx.Module):
  """x / sqrt(mean(x²) + ε) · scale over the trailing scale.ndim axes,
  computed in float32.

  Args:
    dim: the scale's shape, (D,) or D for the residual stream; (Dh,) or
      (H, Dh) for QK-norm.
    axes: the scale's logical axis names (parallel/rules.py).
  """

  def __init__(self, dim: int | tuple[int, ...], *, rngs: nnx.Rngs,
               eps: float = 1e-6, axes: tuple[str, ...] = ('embed',)):
    shape = (dim,) if isinstance(dim, int) else tuple(dim)
    self.eps = eps
    self.reduce = tuple(range(-len(shape), 0))
    self.scale = param(rngs, nnx.initializers.ones, shape, axes)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(
        jnp.mean(jnp.square(x32), self.reduce, keepdims=True) + self.eps)
    return (x32 * self.scale[...]).astype(x.dtype)


def qk_norm(kind: str, heads: int, head_dim: int, *, rngs: nnx.Rngs,
            eps: float) -> RMSNorm:
  """The norm of one of q [.., H, Dh] or k [.., Hkv, Dh] (heads = H or Hkv)."""
  if QK_NORMS[kind] == 1:
    return RMSNorm(head_dim, rngs=rngs, eps=eps, axes=('kv',))
  return RMSNorm((heads, head_dim), rngs=rngs, eps=eps, axes=('heads', 'kv'))
