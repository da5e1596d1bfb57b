"""Fused dispatch: buffers of token indices, gathered inside the expert loop.

'fused' has the same routing, capacity and drops as the index dispatcher,
and 'dropless_fused' the same blocked layout as 'dropless'; each gives its
twin's results (to float rounding) without materialising the buffers of
tokens ([E, G·C, D], [NB·blk, D]). The dispatch only computes which token and
gate fill each buffer row; the experts (core/experts/gathered_mlp.py) gather
their rows tile by tile and return the gate-weighted sums, so the combine is a
reshape. This removes the K (·cf) copies of every token that dominate
fine-grained layers (many small experts, large K) on CPU.

Under expert parallelism 'fused' runs the index dispatcher instead
(`buffered`): rows cross devices as buffers. 'dropless_fused' runs on the
rows each device receives, like 'dropless' (parallel/dropless_ep.py).
"""

from __future__ import annotations

import jax

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.dispatch.dropless_blocked import (block_layout,
                                                    default_block_size)
from moe_jax.core.dispatch.index import INDEX, row_maps
from moe_jax.core.plan import RoutingPlan


def _gathered(x: jax.Array, plan: RoutingPlan, choice: jax.Array,
              **layout) -> ExpertInputs:
  """The gathered layout of buffer rows holding `choice` (G·S·K: empty)."""
  g, s, k = plan.shape
  # The token of each row; an empty row's choice G·S·K maps to token G·S,
  # one past the end, which the experts skip.
  token = choice // k
  weights = plan.combine_weights.reshape(-1).at[choice].get(
      mode='fill', fill_value=0)
  return ExpertInputs(x.reshape(g * s, x.shape[-1]), rows=token,
                      row_weights=weights, **layout)


def dispatch(x: jax.Array, plan: RoutingPlan):
  """[G, S, D] -> tokens [G·S, D] with rows and gates [E, G·C]."""
  _, choice = row_maps(plan)
  inputs = _gathered(x, plan, choice.reshape(plan.num_experts, -1))
  return inputs, None


def dispatch_dropless(x: jax.Array, plan: RoutingPlan, *,
                      block_size: int | None = None):
  """[G, S, D] -> tokens [G·S, D] with rows and gates [NB, blk] sorted by
  expert into blocks (dropless_blocked.block_layout)."""
  g, s, k = plan.shape
  blk = block_size or default_block_size(g * s * k, plan.num_experts)
  layout = block_layout(plan, blk)
  inputs = _gathered(x, plan, layout.choice.reshape(-1, blk),
                     group_sizes=layout.group_sizes,
                     block_expert=layout.block_expert)
  return inputs, None


def combine(y: jax.Array, plan: RoutingPlan, ctx) -> jax.Array:
  """[G·S, D] already-combined sums -> [G, S, D]."""
  del ctx
  g, s, _ = plan.shape
  return y.reshape(g, s, -1)


FUSED = Dispatcher('fused', dispatch, combine, needs_capacity=True,
                   buffered=INDEX)
DROPLESS_FUSED = Dispatcher('dropless_fused', dispatch_dropless, combine,
                            needs_capacity=False)
