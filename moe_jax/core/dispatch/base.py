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
  """Tokens laid out for the experts.

  Attributes:
    x: [E, N, D] padded per-expert batches (capacity modes, N = G·C), or
      [M, D] rows sorted by expert (dropless, M = G·S·K).
    group_sizes: None for the padded layout; int32 [E] rows per expert for
      the sorted layout (rows past their sum are padding).
  """

  x: jax.Array
  group_sizes: jax.Array | None = None


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
