"""Expert MLPs as pure functions of stacked weights.

Weights are stacked over experts: wi [E, D, F] and wo [E, F, D] (SwiGLU adds
wi_gate [E, D, F]). The same function serves every ExpertInputs layout:
padded per-expert batches [E, N, D] use a batched einsum; rows sorted by
expert [M, D] with group_sizes use a grouped matmul (jax.lax.ragged_dot);
blocks [NB, blk, D] with block_expert run the whole MLP tile by tile, each
tile one expert's rows (see blocked_mlp.py); the gathered layout (tokens plus
rows) runs it expert by expert on rows gathered from the tokens and returns
the gate-weighted sums (see gathered_mlp.py). Biases on the input
projections (bi, bi_gate [E, F]; moe.use_bias) are added in every layout.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core.experts.blocked_mlp import blocked_mlp
from moe_jax.core.dispatch.base import ExpertInputs
from moe_jax.core.experts.gathered_mlp import gathered_mlp

EXPERT_TYPES = ('gelu', 'swiglu', 'swiglu_clamped')
# The types with a gate projection wi_gate beside wi.
GATED_TYPES = ('swiglu', 'swiglu_clamped')

# gpt-oss's clamped SwiGLU (transformers' GptOssExperts: swiglu_alpha and
# swiglu_limit of GptOssConfig): the sigmoid's gain and the clamp.
CLAMP_ALPHA = 1.702
CLAMP_LIMIT = 7.0

# Logical axis names of the stacked expert weights; the sharding rules map
# them to mesh axes (expert -> 'expert', mlp -> 'model').
PARAM_AXES = {
    'wi': ('expert', 'embed', 'mlp'),  # [E, D, F]
    'wi_gate': ('expert', 'embed', 'mlp'),  # [E, D, F], SwiGLU only
    'wo': ('expert', 'mlp', 'embed'),  # [E, F, D]
    # With moe.use_bias (gpt-oss): the input projections' biases. The output
    # bias bo [E, D] is added after the combine (core/moe.py), so it never
    # enters the expert functions or their layouts.
    'bi': ('expert', 'mlp'),  # [E, F]
    'bi_gate': ('expert', 'mlp'),  # [E, F], gated types only
}


def is_gated(expert_type: str) -> bool:
  """Whether the expert type has a gate projection (wi_gate)."""
  return expert_type in GATED_TYPES


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
  return {k: params[k].astype(dtype) for k in names if k in params}


def _in(p, x, name):
  """x @ w (+ its bias b, when the params hold one): one expert's weights
  (tiles of the blocked and gathered layouts), where b is [F]."""
  h = x @ p['w' + name]
  return h + p['b' + name] if 'b' + name in p else h


def _bias(params, name, inputs: ExpertInputs):
  """The bias of every row of an expert_matmul output, or 0 without one:
  [E, 1, F] in the padded layout, [M, F] in the sorted one (rows in
  expert order, group_sizes[e] of expert e's; the padding rows past them
  get some expert's bias, and no combine reads them)."""
  if 'b' + name not in params:
    return 0
  b = params['b' + name].astype(inputs.x.dtype)
  if inputs.group_sizes is None:
    return b[:, None, :]
  experts = jnp.repeat(jnp.arange(b.shape[0]), inputs.group_sizes,
                       total_repeat_length=inputs.x.shape[0])
  return b[experts]


def _gelu_pre(p, x):
  return _in(p, x, 'i')


def _gelu_post(p, h):
  return jax.nn.gelu(h) @ p['wo']


def _swiglu_pre(p, x):
  return _in(p, x, 'i_gate'), _in(p, x, 'i')


def _swiglu_act(h):
  gate, up = h
  return jax.nn.silu(gate) * up


def _swiglu_post(p, h):
  return _swiglu_act(h) @ p['wo']


def clamped_swiglu_act(h):
  """gpt-oss: (clip(up, ±limit) + 1) · g·σ(α·g), g = min(gate, limit).

  The clamps bound the activation of outlier tokens (an upper bound only
  on the gate: its SiLU-like branch is already near 0 below); their
  gradient is 0 where they clip, as torch's clamp gives.
  """
  gate, up = h
  gate = jnp.minimum(gate, CLAMP_LIMIT)
  up = jnp.clip(up, -CLAMP_LIMIT, CLAMP_LIMIT)
  return (up + 1) * gate * jax.nn.sigmoid(gate * CLAMP_ALPHA)


def _clamped_post(p, h):
  return clamped_swiglu_act(h) @ p['wo']


def gelu_mlp(params: dict[str, jax.Array], inputs: ExpertInputs) -> jax.Array:
  """wo · gelu(wi · x), per expert. params: wi [E, D, F], wo [E, F, D]."""
  if inputs.rows is not None or inputs.block_expert is not None:
    return _tiled(_gelu_pre, jax.nn.gelu, _gelu_post, params, inputs)
  gs = inputs.group_sizes
  h = jax.nn.gelu(expert_matmul(inputs.x, params['wi'], gs) +
                  _bias(params, 'i', inputs))
  return expert_matmul(h, params['wo'], gs)


def swiglu_mlp(params: dict[str, jax.Array],
               inputs: ExpertInputs) -> jax.Array:
  """wo · (silu(wi_gate · x) ⊙ wi · x), per expert (Shazeer 2020)."""
  return _gated(_swiglu_act, _swiglu_post, params, inputs)


def clamped_swiglu_mlp(params: dict[str, jax.Array],
                       inputs: ExpertInputs) -> jax.Array:
  """wo · clamped_swiglu_act(wi_gate · x, wi · x), per expert (gpt-oss)."""
  return _gated(clamped_swiglu_act, _clamped_post, params, inputs)


def _tiled(pre, act, post, params, inputs: ExpertInputs) -> jax.Array:
  """The gathered or the blocked layout, one expert's weights per tile."""
  p = _cast(params, ('wi_gate', 'wi', 'wo', 'bi_gate', 'bi'), inputs.x.dtype)
  if inputs.rows is not None:
    return gathered_mlp(pre, act, p, inputs)
  return blocked_mlp(pre, post, p, inputs)


def _gated(act, post, params, inputs: ExpertInputs) -> jax.Array:
  """wo · act(wi_gate · x, wi · x), in any layout."""
  if inputs.rows is not None or inputs.block_expert is not None:
    return _tiled(_swiglu_pre, act, post, params, inputs)
  gs = inputs.group_sizes
  h = act(tuple(expert_matmul(inputs.x, params['w' + n], gs) +
                _bias(params, n, inputs) for n in ('i_gate', 'i')))
  return expert_matmul(h, params['wo'], gs)


EXPERT_FNS: dict[str, Callable[..., jax.Array]] = {
    'gelu': gelu_mlp,
    'swiglu': swiglu_mlp,
    'swiglu_clamped': clamped_swiglu_mlp,
}
