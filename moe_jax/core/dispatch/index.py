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


def dispatch(x: jax.Array, plan: RoutingPlan):
  """[G, S, D] -> ExpertInputs with x [E, G·C, D]."""
  g, s, k = plan.shape
  d = x.shape[-1]
  num_rows = plan.num_experts * g * plan.capacity
  num_choices = g * s * k
  row = plan.buffer_index().reshape(-1)  # [G·S·K], num_rows where dropped.
  # The inverse map: which choice fills each buffer row (num_choices: empty).
  choice = jnp.full((num_rows,), num_choices, jnp.int32)
  choice = choice.at[row].set(jnp.arange(num_choices, dtype=jnp.int32),
                              mode='drop')
  # [G·S·K, D]: each token once per choice; the broadcast's gradient is a
  # sum over K, cheap and scatter-free.
  choices_x = jnp.broadcast_to(x[:, :, None, :], (g, s, k, d))
  expert_x = permute_rows(choices_x.reshape(num_choices, d), choice, row)
  return ExpertInputs(expert_x.reshape(plan.num_experts, -1, d)), (row, choice)


def combine(y: jax.Array, plan: RoutingPlan, ctx) -> jax.Array:
  """[E, G·C, D] -> [G, S, D], each token the gate-weighted sum of its rows."""
  row, choice = ctx
  g, s, k = plan.shape
  d = y.shape[-1]
  picked = permute_rows(y.reshape(-1, d), row, choice).reshape(g, s, k, d)
  weights = plan.combine_weights.astype(y.dtype)
  return jnp.einsum('gskd,gsk->gsd', picked, weights)


INDEX = Dispatcher('index', dispatch, combine, needs_capacity=True)
