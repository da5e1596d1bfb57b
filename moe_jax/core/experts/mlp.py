"""Expert MLPs as pure functions of stacked weights.

Weights are stacked over experts: wi [E, D, F] and wo [E, F, D] (SwiGLU adds
wi_gate [E, D, F]). The same function serves every ExpertInputs layout:
padded per-expert batches [E, N, D] use a batched einsum; rows sorted by
expert [M, D] with group_sizes use a grouped matmul (jax.lax.ragged_dot);
blocks [NB, blk, D] with block_expert run the whole MLP tile by tile, each
tile one expert's rows (see blocked_mlp.py); the gathered layout (tokens plus
rows) runs it expert by expert on rows gathered from the tokens and returns
the gate-weighted sums (see gathered_mlp.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core.experts.blocked_mlp import blocked_mlp
from moe_jax.core.dispatch.base import ExpertInputs
from moe_jax.core.experts.gathered_mlp import gathered_mlp

EXPERT_TYPES = ('gelu', 'swiglu')

# Logical axis names of the stacked expert weights; the sharding rules map
# them to mesh axes (expert -> 'expert', mlp -> 'model').
PARAM_AXES = {
    'wi': ('expert', 'embed', 'mlp'),  # [E, D, F]
    'wi_gate': ('expert', 'embed', 'mlp'),  # [E, D, F], SwiGLU only
    'wo': ('expert', 'mlp', 'embed'),  # [E, F, D]
}


def _matmul_pre(w, x):
  return x @ w


def expert_matmul(x: jax.Array, w: jax.Array,
                  group_sizes: jax.Array | None = None,
                  block_expert: jax.Array | None = None) -> jax.Array:
  """x @ w[e] for every expert e, in any ExpertInputs layout.

  Args:
    x: [E, N, D] (padded), [M, D] sorted by expert (group_sizes set), or
      [NB, blk, D] blocks (block_expert set).
    w: [E, D, F].
    group_sizes: None, or int32 [E] rows of x that belong to each expert.
      With block_expert, the trailing blocks past the sum_e ceil(n_e / blk)
      in use are skipped: their output is 0 and they get no gradient.
    block_expert: None, or int32 [NB] the expert of each block of x.

  Returns:
    [E, N, F], [M, F] or [NB, blk, F].
  """
  w = w.astype(x.dtype)
  if block_expert is not None:
    return blocked_mlp(_matmul_pre, None, w,
                    ExpertInputs(x, group_sizes, block_expert))
  if group_sizes is None:
    return jnp.einsum('end,edf->enf', x, w)
  return jax.lax.ragged_dot(x, w, group_sizes)


def _cast(params, names, dtype):
  return {k: params[k].astype(dtype) for k in names}


def _gelu_pre(p, x):
  return x @ p['wi']


def _gelu_post(p, h):
  return jax.nn.gelu(h) @ p['wo']


def _swiglu_pre(p, x):
  return x @ p['wi_gate'], x @ p['wi']


def _swiglu_act(h):
  gate, up = h
  return jax.nn.silu(gate) * up


def _swiglu_post(p, h):
  return _swiglu_act(h) @ p['wo']


def gelu_mlp(params: dict[str, jax.Array], inputs: ExpertInputs) -> jax.Array:
  """wo · gelu(wi · x), per expert. params: wi [E, D, F], wo [E, F, D]."""
  if inputs.rows is not None:
    p = _cast(params, ('wi', 'wo'), inputs.x.dtype)
    return gathered_mlp(_gelu_pre, jax.nn.gelu, p, inputs)
  if inputs.block_expert is not None:
    p = _cast(params, ('wi', 'wo'), inputs.x.dtype)
    return blocked_mlp(_gelu_pre, _gelu_post, p, inputs)
  gs = inputs.group_sizes
  h = jax.nn.gelu(expert_matmul(inputs.x, params['wi'], gs))
  return expert_matmul(h, params['wo'], gs)


def swiglu_mlp(params: dict[str, jax.Array],
               inputs: ExpertInputs) -> jax.Array:
  """wo · (silu(wi_gate · x) ⊙ wi · x), per expert (Shazeer 2020)."""
  if inputs.rows is not None:
    p = _cast(params, ('wi_gate', 'wi', 'wo'), inputs.x.dtype)
    return gathered_mlp(_swiglu_pre, _swiglu_act, p, inputs)
  if inputs.block_expert is not None:
    p = _cast(params, ('wi_gate', 'wi', 'wo'), inputs.x.dtype)
    return blocked_mlp(_swiglu_pre, _swiglu_post, p, inputs)
  gs = inputs.group_sizes
  gate = jax.nn.silu(expert_matmul(inputs.x, params['wi_gate'], gs))
  h = gate * expert_matmul(inputs.x, params['wi'], gs)
  return expert_matmul(h, params['wo'], gs)


EXPERT_FNS: dict[str, Callable[..., jax.Array]] = {
    'gelu': gelu_mlp,
    'swiglu': swiglu_mlp,
}
