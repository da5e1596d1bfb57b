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

from typing import Any, Callable, NamedTuple, Protocol

import jax


class ExpertInputs(NamedTuple):
  """Tokens laid out for the experts, in one of four layouts.

  padded (capacity modes): x [E, N, D], N = G·C; group_sizes and
    block_expert None.
  sorted (dropless_ragged): x [M, D] rows sorted by expert, M = G·S·K;
    group_sizes set, block_expert None.
  blocked (dropless): x [NB, blk, D], rows sorted by expert and each
    expert's rows padded to whole blocks, so block b belongs to expert
    block_expert[b] alone; both fields set.
  gathered (fused, dropless_fused): x [T, D] the tokens themselves; rows
    int32 the token of each buffer row (T: empty) and row_weights its gate,
    [E, N] for capacity buffers or [NB, blk] for blocks (then group_sizes
    and block_expert set too). The experts gather their rows, and return
    [T, D] gate-weighted sums: the combine is already done (see
    core/experts/gathered_mlp.py).

  Attributes:
    x: the rows, shaped as above.
    group_sizes: None for the padded layout; else int32 [E] real rows per
      expert (in the sorted layout rows past their sum are padding; in the
      blocked layout the experts skip the trailing blocks past the
      sum_e ceil(n_e / blk) in use, which are all padding).
    block_expert: None, or int32 [NB] the expert of each block (blocked
      layout). Rows that hold no choice are zero whatever their block.
    rows, row_weights: the gathered layout's buffer rows and gates; None in
      the others.
  """

  x: jax.Array
  group_sizes: jax.Array | None = None
  block_expert: jax.Array | None = None
  rows: jax.Array | None = None
  row_weights: jax.Array | None = None


class Dispatcher(NamedTuple):
  """A named pair of dispatch and combine functions.

  Attributes:
    name: registry name.
    dispatch: (x [G, S, D], plan) -> (ExpertInputs, ctx).
    combine: (y, plan, ctx) -> [G, S, D].
    needs_capacity: whether plans must have a finite capacity.
    buffered: None, or a dispatcher with the same results whose experts see
      materialised [E, G·C, D] buffers; expert parallelism exchanges those
      buffers between devices, so it runs this one instead.
  """

  name: str
  dispatch: Callable[..., tuple[ExpertInputs, Any]]
  combine: Callable[..., jax.Array]
  needs_capacity: bool
  buffered: 'Dispatcher | None' = None


class RunExperts(Protocol):
  """dispatch -> experts -> combine; how moe_apply reaches its experts.

  moe_apply takes one of these so that the pure core need not know about
  meshes: run_local below is the one-device default, and the parallel layer
  (moe_jax.parallel.expert_parallel.run_experts) passes one that exchanges
  tokens between devices.
  """

  def __call__(self, x: jax.Array, plan: Any, params: dict[str, jax.Array],
               dispatcher: Dispatcher, expert_fn: Callable) -> jax.Array:
    ...


def run_local(x: jax.Array, plan: Any, params: dict[str, jax.Array],
              dispatcher: Dispatcher, expert_fn: Callable) -> jax.Array:
  """dispatch -> experts -> combine, all on the arrays as given.

  Args:
    x: [G, S, D] grouped tokens.
    plan: the RoutingPlan of x.
    params: expert weights, each [E, ...] with the expert axis first.
    dispatcher: how tokens move to per-expert buffers and back.
    expert_fn: (params, ExpertInputs) -> outputs in the same layout.

  Returns:
    [G, S, D] combined expert outputs.
  """
  inputs, ctx = dispatcher.dispatch(x, plan)
  return dispatcher.combine(expert_fn(params, inputs), plan, ctx)
