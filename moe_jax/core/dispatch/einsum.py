"""One-hot einsum dispatch (the GShard formulation).

The readable reference implementation: it builds dense dispatch and combine
tensors [G, S, E, C] and moves tokens with two einsums. Its cost is
O(G·S·E·C·D), i.e. quadratic in the group size; use it to check the others,
not for speed.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.plan import RoutingPlan


def dispatch_tensors(plan: RoutingPlan) -> tuple[jax.Array, jax.Array]:
  """Returns (dispatch mask, combine weights), both float32 [G, S, E, C]."""
  expert_onehot = jax.nn.one_hot(plan.expert_index, plan.num_experts)
  # one_hot of DROPPED (-1) is all zeros, so dropped choices vanish here.
  slot_onehot = jax.nn.one_hot(plan.slot, plan.capacity)  # [G, S, K, C]
  mask = jnp.einsum('gske,gskc->gsec', expert_onehot, slot_onehot)
  combine = jnp.einsum('gsk,gske,gskc->gsec', plan.combine_weights,
                       expert_onehot, slot_onehot)
  return mask, combine


def dispatch(x: jax.Array, plan: RoutingPlan):
  """[G, S, D] -> ExpertInputs with x [E, G·C, D]."""
  mask, combine = dispatch_tensors(plan)
  g, _, _ = plan.shape
  expert_x = jnp.einsum('gsec,gsd->egcd', mask.astype(x.dtype), x)
  expert_x = expert_x.reshape(plan.num_experts, g * plan.capacity, x.shape[-1])
  return ExpertInputs(expert_x), combine


def combine(y: jax.Array, plan: RoutingPlan, combine_weights) -> jax.Array:
  """[E, G·C, D] -> [G, S, D], each token the gate-weighted sum of its rows."""
  g, _, _ = plan.shape
  y = y.reshape(plan.num_experts, g, plan.capacity, y.shape[-1])
  return jnp.einsum('gsec,egcd->gsd', combine_weights.astype(y.dtype), y)


EINSUM = Dispatcher('einsum', dispatch, combine, needs_capacity=True)
