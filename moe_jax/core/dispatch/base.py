"""The dispatcher contract.

A dispatcher has no parameters. It moves a group batch of tokens [G, S, D] to
per-expert inputs following a RoutingPlan, and brings the experts' outputs
back, weighted by the plan's combine weights:

    inputs, ctx = dispatcher.dispatch(x, plan)     # [G, S, D] -> ExpertInputs
    y = experts(params, inputs)                    # same layout as inputs.x
    out = dispatcher.combine(y, plan, ctx)         # -> [G, S, D]

`ctx` carries whatever the combine needs from the dispatch (e.g. a sort
order) so that work is not repeated.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax


class ExpertInputs(NamedTuple):
  """Tokens laid out for the experts, in one of three layouts.

  padded (capacity modes): x [E, N, D], N = G·C; group_sizes and
    block_expert None.
  sorted (dropless_ragged): x [M, D] rows sorted by expert, M = G·S·K;
    group_sizes set, block_expert None.
  blocked (dropless): x [NB, blk, D], rows sorted by expert and each
    expert's rows padded to whole blocks, so block b belongs to expert
    block_expert[b] alone; both fields set.

  Attributes:
    x: the rows, shaped as above.
    group_sizes: None for the padded layout; else int32 [E] real rows per
      expert (in the sorted layout rows past their sum are padding; in the
      blocked layout the experts skip the trailing blocks past the
      sum_e ceil(n_e / blk) in use, which are all padding).
    block_expert: None, or int32 [NB] the expert of each block (blocked
      layout). Rows that hold no choice are zero whatever their block.
  """

  x: jax.Array
  group_sizes: jax.Array | None = None
  block_expert: jax.Array | None = None


class Dispatcher(NamedTuple):
  """A named pair of dispatch and combine functions.

  Attributes:
    name: registry name.
    dispatch: (x [G, S, D], plan) -> (ExpertInputs, ctx).
    combine: (y, plan, ctx) -> [G, S, D].
    needs_capacity: whether plans must have a finite capacity.
  """

  name: str
  dispatch: Callable[..., tuple[ExpertInputs, Any]]
  combine: Callable[..., jax.Array]
  needs_capacity: bool
