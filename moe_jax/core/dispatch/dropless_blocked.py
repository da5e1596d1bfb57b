"""Blocked dropless dispatch: sort by expert, pad each expert to whole blocks.

The MegaBlocks idea (Gale et al. 2022) with static shapes. Choices are sorted
by expert and each expert's rows are padded up to a multiple of `blk`, so
every block of `blk` rows belongs to a single expert. The experts then run
plain matmuls over runs of blocks (core/experts/blocked_mlp.py) instead of
`jax.lax.ragged_dot`, which on CPU costs several dense matmuls' worth (kept
as 'dropless_ragged' for GPU/TPU).

Static shapes: with M = G·S·K choices and n_e of them routed to expert e,
the blocks in use number sum_e ceil(n_e / blk) <= (M + E·(blk - 1)) / blk, so
the buffer has NB = floor((M + E·(blk - 1)) / blk) blocks whatever the
routing. Blocks past the used ones are all padding: they map to the last
expert and hold zero rows. Their size, up to E·blk rows, is the price of
fixed shapes; `default_block_size` keeps it under M/16. The experts skip
those blocks (they know the real group sizes), so they cost memory and
elementwise work, not matmuls.

Nothing here scatters: both the choice -> row map and its inverse come from
sorts and gathers, and tokens move with `permute_rows`, whose gradient is the
gather by the inverse map.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs
from moe_jax.core.dispatch.index import combine_rows, rows_from_choices
from moe_jax.core.plan import RoutingPlan, segment_of

# The buffer's padding, up to E·blk rows, stays between M / (2·PAD_DIVISOR)
# and M / PAD_DIVISOR (before clipping). The experts skip unused blocks and
# run runs of blocks as big tiles (blocked_mlp.block_schedule), so small blocks
# cost little: 8, 16 and 32 timed alike on CPU at M = 8192, E = 8.
PAD_DIVISOR = 16
MIN_BLOCK, MAX_BLOCK = 8, 512


def default_block_size(num_choices: int, num_experts: int) -> int:
  """blk: the largest power of two <= M / (PAD_DIVISOR·E), in [8, 512].

  Args:
    num_choices: M = G·S·K.
    num_experts: E.
  """
  target = max(num_choices // (PAD_DIVISOR * num_experts), 1)
  blk = 1 << (target.bit_length() - 1)  # Largest power of two <= target.
  return min(max(blk, MIN_BLOCK), MAX_BLOCK)


def num_blocks(num_choices: int, num_experts: int, block_size: int) -> int:
  """NB: the most blocks any routing of M choices can fill (static)."""
  return (num_choices + num_experts * (block_size - 1)) // block_size


class BlockLayout(NamedTuple):
  """Where choices sit in the blocked buffer [NB·blk, D].

  Attributes:
    row: int32 [M]: the buffer row of each choice; NB·blk where unrouted.
    choice: int32 [NB·blk]: the choice in each row; M for padding rows.
    block_expert: int32 [NB]: the expert of each block.
    group_sizes: int32 [E]: routed choices per expert.
    block_size: blk (static).
  """

  row: jax.Array
  choice: jax.Array
  block_expert: jax.Array
  group_sizes: jax.Array
  block_size: int


def block_layout(plan: RoutingPlan, block_size: int) -> BlockLayout:
  """Sorts the plan's routed choices by expert into block-aligned rows.

  Within an expert, choices keep their flat (g, s, k) order.
  """
  g, s, k = plan.shape
  e, blk = plan.num_experts, block_size
  m = g * s * k
  nb = num_blocks(m, e, blk)
  key, sizes = plan.expert_sort_key()
  order = jnp.argsort(key, stable=True)  # Sorted position -> choice.
  # The inverse permutation by a second sort: a scatter would do it in
  # O(M), but sorts keep the whole program, gradient included, scatter-free.
  position = jnp.argsort(order)  # Choice -> sorted position.
  first = jnp.cumsum(sizes) - sizes  # Sorted position of expert e's rows.
  blocks = (sizes + blk - 1) // blk
  block_end = jnp.cumsum(blocks)
  row_start = (block_end - blocks) * blk  # Buffer row of expert e's rows.
  # Block b belongs to the first expert whose blocks end after b; blocks
  # past the used ones clip to the last expert (they hold no choice).
  b = jnp.arange(nb, dtype=jnp.int32)
  block_expert = segment_of(block_end, b)

  expert = jnp.minimum(key, e - 1)
  row = row_start[expert] + position - first[expert]
  row = jnp.where(key < e, row, nb * blk).astype(jnp.int32)

  r = jnp.arange(nb * blk, dtype=jnp.int32)
  r_expert = jnp.repeat(block_expert, blk)
  rank = r - row_start[r_expert]  # >= 0: a block never precedes its expert.
  filled = rank < sizes[r_expert]
  choice = order[jnp.where(filled, first[r_expert] + rank, 0)]
  choice = jnp.where(filled, choice, m).astype(jnp.int32)
  return BlockLayout(row, choice, block_expert, sizes.astype(jnp.int32), blk)


def dispatch(x: jax.Array, plan: RoutingPlan, *,
             block_size: int | None = None):
  """[G, S, D] -> ExpertInputs with x [NB, blk, D] and block_expert [NB].

  Args:
    x: [G, S, D] tokens.
    plan: a plan; dropped or unrouted choices are skipped.
    block_size: blk; default `default_block_size(G·S·K, E)`.
  """
  g, s, k = plan.shape
  d = x.shape[-1]
  m = g * s * k
  blk = block_size or default_block_size(m, plan.num_experts)
  layout = block_layout(plan, blk)
  rows = rows_from_choices(x, plan, layout.choice, layout.row)  # [NB·blk, D]
  inputs = ExpertInputs(rows.reshape(-1, blk, d), layout.group_sizes,
                        layout.block_expert)
  return inputs, layout


def combine(y: jax.Array, plan: RoutingPlan, layout: BlockLayout) -> jax.Array:
  """[NB, blk, D] -> [G, S, D], each token the gate-weighted sum of its rows."""
  return combine_rows(y.reshape(-1, y.shape[-1]), plan, layout.row,
                      layout.choice)


DROPLESS_BLOCKED = Dispatcher('dropless', dispatch, combine,
                              needs_capacity=False)
