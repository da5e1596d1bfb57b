"""Index dispatch: gathers into capacity buffers, no [G, S, E, C] tensor.

Each kept choice owns one row of an expert-major buffer [E·G·C, D] (see
RoutingPlan.buffer_index). Dispatch inverts that map with an integer scatter
(no gradient flows through indices) and then gathers token rows; combine
gathers each choice's output row back. Both moves are O(G·S·K·D), the same
order as reading the tokens once, and their gradients are scatter-adds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.plan import RoutingPlan


def _with_zero_row(x: jax.Array) -> jax.Array:
  """Appends a zero row, the target of every empty or dropped index."""
  return jnp.concatenate([x, jnp.zeros((1, x.shape[-1]), x.dtype)], axis=0)


def dispatch(x: jax.Array, plan: RoutingPlan):
  """[G, S, D] -> ExpertInputs with x [E, G·C, D]."""
  g, s, k = plan.shape
  d = x.shape[-1]
  num_rows = plan.num_experts * g * plan.capacity
  row = plan.buffer_index()  # [G, S, K], num_rows where dropped.
  token = jnp.broadcast_to(
      jnp.arange(g * s, dtype=jnp.int32).reshape(g, s, 1), (g, s, k))
  # Which token fills each buffer row; empty rows read the zero row (g·s).
  source = jnp.full((num_rows,), g * s, jnp.int32)
  source = source.at[row.reshape(-1)].set(token.reshape(-1), mode='drop')
  expert_x = _with_zero_row(x.reshape(g * s, d))[source]
  return ExpertInputs(expert_x.reshape(plan.num_experts, -1, d)), row


def combine(y: jax.Array, plan: RoutingPlan, row: jax.Array) -> jax.Array:
  """[E, G·C, D] -> [G, S, D], each token the gate-weighted sum of its rows."""
  d = y.shape[-1]
  picked = _with_zero_row(y.reshape(-1, d))[row]  # [G, S, K, D]
  weights = plan.combine_weights.astype(y.dtype)
  return jnp.einsum('gskd,gsk->gsd', picked, weights)


INDEX = Dispatcher('index', dispatch, combine, needs_capacity=True)
