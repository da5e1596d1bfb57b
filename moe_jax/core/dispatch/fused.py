"""Fused dispatch: the capacity buffers, gathered inside the expert loop.

The same routing, capacity and drops as the index dispatcher, and the same
results (to float rounding), but no [E, G·C, D] buffer is materialised: the
dispatch only computes which token and gate fill each buffer row, and the
experts (core/gathered_mlp.py) gather their rows one expert at a time and
return the gate-weighted sums, so the combine is a reshape. This removes the
K·cf copies of every token that dominate fine-grained layers (many small
experts, large K) on CPU.

Under expert parallelism the rows must travel between devices as buffers,
so the exchange runs the index dispatcher instead (`buffered`).
"""

from __future__ import annotations

import jax

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.dispatch.index import INDEX, row_maps
from moe_jax.core.plan import RoutingPlan


def dispatch(x: jax.Array, plan: RoutingPlan):
  """[G, S, D] -> the gathered layout: tokens [G·S, D], rows and gates
  [E, G·C]."""
  g, s, k = plan.shape
  _, choice = row_maps(plan)
  # The token of each row; an empty row's choice G·S·K maps to token G·S,
  # one past the end, which the experts skip.
  token = choice // k
  weights = plan.combine_weights.reshape(-1).at[choice].get(
      mode='fill', fill_value=0)
  e = plan.num_experts
  return ExpertInputs(x.reshape(g * s, x.shape[-1]), rows=token.reshape(e, -1),
                      row_weights=weights.reshape(e, -1)), None


def combine(y: jax.Array, plan: RoutingPlan, ctx) -> jax.Array:
  """[G·S, D] already-combined sums -> [G, S, D]."""
  del ctx
  g, s, _ = plan.shape
  return y.reshape(g, s, -1)


FUSED = Dispatcher('fused', dispatch, combine, needs_capacity=True,
                   buffered=INDEX)
