"""Dropless dispatch: sort choices by expert, grouped matmul, unsort.

No capacity and no padding to C: every routed choice is computed (MegaBlocks,
Gale et al. 2022, in its simplest form). The experts see rows sorted by
expert with `group_sizes`, which `jax.lax.ragged_dot` consumes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.plan import RoutingPlan


def dispatch(x: jax.Array, plan: RoutingPlan):
  """[G, S, D] -> ExpertInputs with x [G·S·K, D] sorted by expert."""
  g, s, k = plan.shape
  # Unrouted choices sort last and fall outside every group, so the grouped
  # matmul leaves their rows at zero instead of computing them.
  key, group_sizes = plan.expert_sort_key()
  order = jnp.argsort(key, stable=True)  # [G·S·K]
  token = order // k
  sorted_x = x.reshape(g * s, x.shape[-1])[token]
  return ExpertInputs(sorted_x, group_sizes), order


def combine(y: jax.Array, plan: RoutingPlan, order: jax.Array) -> jax.Array:
  """[G·S·K, D] sorted rows -> [G, S, D] gate-weighted sums."""
  g, s, k = plan.shape
  weights = plan.combine_weights.reshape(-1)[order].astype(y.dtype)
  out = jnp.zeros((g * s, y.shape[-1]), y.dtype)
  out = out.at[order // k].add(y * weights[:, None])
  return out.reshape(g, s, -1)


DROPLESS_RAGGED = Dispatcher('dropless_ragged', dispatch, combine,
                             needs_capacity=False)
