"""Index dispatch: gathers into capacity buffers, no [G, S, E, C] tensor.

Each kept choice owns one row of an expert-major buffer [E·G·C, D] (see
RoutingPlan.buffer_index), so the choice -> row map is injective and its
inverse (row -> choice) is built once with an integer scatter. Dispatch
gathers choices into rows and combine gathers rows back into choices; both
moves are O(G·S·K·D), the order of reading the tokens once.

Because the map is injective, the gradient of each gather is the gather by
the inverse map. Stating that with a custom VJP replaces the scatter-add
autodiff would emit, which on CPU cost more than the expert matmuls at our
shapes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.plan import RoutingPlan


def _pad_row(x: jax.Array) -> jax.Array:
  """Appends a zero row: the target of every empty or dropped index."""
  return jnp.concatenate([x, jnp.zeros((1, x.shape[-1]), x.dtype)], axis=0)


@jax.custom_vjp
def permute_rows(x: jax.Array, index: jax.Array,
                 inverse: jax.Array) -> jax.Array:
  """y[i] = x[index[i]], or 0 where index[i] == len(x).

  Args:
    x: [N, D].
    index: int32 [M]; every value < N appears at most once.
    inverse: int32 [N]; inverse[index[i]] = i, and M where x's row is unused.
  """
  del inverse
  return _pad_row(x)[index]


def _permute_rows_fwd(x, index, inverse):
  return permute_rows(x, index, inverse), (index, inverse)


def _permute_rows_bwd(residuals, dy):
  index, inverse = residuals
  return _pad_row(dy)[inverse], None, None


permute_rows.defvjp(_permute_rows_fwd, _permute_rows_bwd)


def rows_from_choices(x: jax.Array, plan: RoutingPlan, choice: jax.Array,
                      row: jax.Array) -> jax.Array:
  """[G, S, D] tokens -> buffer rows [R, D], row r holding choice[r].

  Args:
    x: [G, S, D] tokens.
    plan: the plan (gives K).
    choice: int32 [R], the choice (flat g, s, k) in each row; G·S·K: empty.
    row: int32 [G·S·K], its inverse; R where a choice is not dispatched.
  """
  g, s, k = plan.shape
  d = x.shape[-1]
  # [G·S·K, D]: each token once per choice; the broadcast's gradient is a
  # sum over K, cheap and scatter-free.
  choices_x = jnp.broadcast_to(x[:, :, None, :], (g, s, k, d))
  return permute_rows(choices_x.reshape(g * s * k, d), choice, row)


def combine_rows(y: jax.Array, plan: RoutingPlan, row: jax.Array,
                 choice: jax.Array) -> jax.Array:
  """Buffer rows [R, D] -> [G, S, D], each token the gate-weighted sum of the
  rows of its choices (the inverse move of rows_from_choices)."""
  g, s, k = plan.shape
  d = y.shape[-1]
  picked = permute_rows(y, row, choice).reshape(g, s, k, d)
  weights = plan.combine_weights.astype(y.dtype)
  return jnp.einsum('gskd,gsk->gsd', picked, weights)


def row_maps(plan: RoutingPlan) -> tuple[jax.Array, jax.Array]:
  """(row, choice): each choice's buffer row and each row's choice.

  row: int32 [G·S·K], the row in the expert-major [E·G·C] buffer, E·G·C
  where dropped; choice: int32 [E·G·C], its inverse, G·S·K for an empty row.
  """
  g, s, k = plan.shape
  num_rows = plan.num_experts * g * plan.capacity
  num_choices = g * s * k
  row = plan.buffer_index().reshape(-1)
  choice = jnp.full((num_rows,), num_choices, jnp.int32)
  choice = choice.at[row].set(jnp.arange(num_choices, dtype=jnp.int32),
                              mode='drop')
  return row, choice


def dispatch(x: jax.Array, plan: RoutingPlan):
  """[G, S, D] -> ExpertInputs with x [E, G·C, D]."""
  row, choice = row_maps(plan)
  expert_x = rows_from_choices(x, plan, choice, row)
  return (ExpertInputs(expert_x.reshape(plan.num_experts, -1, x.shape[-1])),
          (row, choice))


def combine(y: jax.Array, plan: RoutingPlan, ctx) -> jax.Array:
  """[E, G·C, D] -> [G, S, D], each token the gate-weighted sum of its rows."""
  row, choice = ctx
  return combine_rows(y.reshape(-1, y.shape[-1]), plan, row, choice)


INDEX = Dispatcher('index', dispatch, combine, needs_capacity=True)
