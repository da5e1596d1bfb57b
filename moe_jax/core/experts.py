"""Expert MLPs as pure functions of stacked weights.

Weights are stacked over experts: wi [E, D, F] and wo [E, F, D] (SwiGLU adds
wi_gate [E, D, F]). The same function serves both ExpertInputs layouts:
padded per-expert batches [E, N, D] use a batched einsum; rows sorted by
expert [M, D] with group_sizes use a grouped matmul (jax.lax.ragged_dot).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core.dispatch.base import ExpertInputs

EXPERT_TYPES = ('gelu', 'swiglu')


def expert_matmul(x: jax.Array, w: jax.Array,
                  group_sizes: jax.Array | None) -> jax.Array:
  """x @ w[e] for every expert e, in either layout.

  Args:
    x: [E, N, D] when group_sizes is None, else [M, D] sorted by expert.
    w: [E, D, F].
    group_sizes: None, or int32 [E] rows of x that belong to each expert.

  Returns:
    [E, N, F] or [M, F].
  """
  w = w.astype(x.dtype)
  if group_sizes is None:
    return jnp.einsum('end,edf->enf', x, w)
  return jax.lax.ragged_dot(x, w, group_sizes)


def gelu_mlp(params: dict[str, jax.Array], inputs: ExpertInputs) -> jax.Array:
  """wo · gelu(wi · x), per expert. params: wi [E, D, F], wo [E, F, D]."""
  gs = inputs.group_sizes
  h = jax.nn.gelu(expert_matmul(inputs.x, params['wi'], gs))
  return expert_matmul(h, params['wo'], gs)


def swiglu_mlp(params: dict[str, jax.Array],
               inputs: ExpertInputs) -> jax.Array:
  """wo · (silu(wi_gate · x) ⊙ wi · x), per expert (Shazeer 2020)."""
  gs = inputs.group_sizes
  gate = jax.nn.silu(expert_matmul(inputs.x, params['wi_gate'], gs))
  h = gate * expert_matmul(inputs.x, params['wi'], gs)
  return expert_matmul(h, params['wo'], gs)


EXPERT_FNS: dict[str, Callable[..., jax.Array]] = {
    'gelu': gelu_mlp,
    'swiglu': swiglu_mlp,
}
