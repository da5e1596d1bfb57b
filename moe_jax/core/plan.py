"""The routing plan: the one data structure routers hand to dispatchers.

A router decides, for every token, K (expert, weight, slot) triples; a
dispatcher only reads them. Keeping this contract small is what lets a new
router (expert choice, Soft-MoE-style, loss-free balancing) arrive without
touching dispatcher or expert code.

Shape letters (docs/core.md): G groups, S tokens per group, K choices per token,
E experts, C expert capacity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

DROPPED = -1  # The slot of a choice that was not dispatched.
# The aux key under which a router hands moe_apply bool [G, S, K]: the
# choices it meant to send to a real expert, before capacity. A plan alone
# cannot tell a dropped choice from one the router never made (ReLU routing's
# and expert choice's K = E columns, null experts: slot DROPPED and gate 0
# either way); routing traces need the difference. Not a logged metric:
# moe_apply takes it out of aux (core/moe.py).
ROUTED = 'routed'


def segment_of(ends: jax.Array, index: jax.Array) -> jax.Array:
  """int32: the segment holding each index, for segments ending at `ends`.

  ends: int [E], cumulative segment ends; index: int [N]. Indices past the
  last end clip to the last segment.
  """
  segment = jnp.sum(ends[None, :] <= index[:, None], axis=1)
  return jnp.minimum(segment, ends.shape[0] - 1).astype(jnp.int32)


def expert_counts(index: jax.Array, num_bins: int,
                  weights: jax.Array | None = None) -> jax.Array:
  """[G, num_bins]: per row of `index`, how often (or how much weight) each
  bin occurs.

  A scatter-add per row, O(N), where summing a one-hot [G, N, num_bins]
  costs O(N·E): at E = 256, K = 8 the one-hot sums took more time than the
  expert matmuls on CPU. vmap keeps the rows a batch dimension of the
  scatter, so a partitioner splitting G keeps each row's counts local.

  Args:
    index: int [G, N] bins in [0, num_bins).
    num_bins: static.
    weights: None (count 1 each, int32), or float [G, N] to sum instead.
  """
  if weights is None:
    weights = jnp.ones(index.shape, jnp.int32)
  count = lambda i, w: jnp.zeros((num_bins,), w.dtype).at[i].add(w)
  return jax.vmap(count)(index, weights)


@struct.dataclass
class RoutingPlan:
  """Where each of a token's K choices goes.

  Attributes:
    expert_index: int32 [G, S, K]. The expert of each choice.
    combine_weights: float32 [G, S, K]. The gate that scales the expert's
      output for this choice; exactly 0 where the choice was dropped.
    slot: int32 [G, S, K]. Position of the choice in its expert's buffer for
      its group, in [0, C), or DROPPED (-1) when the choice is not dispatched
      (over capacity, or a second choice the routing policy skipped). In
      dropless mode the slot is the position in an unbounded buffer.
    num_experts: E (static).
    capacity: C (static), or None for dropless routing.
  """

  expert_index: jax.Array
  combine_weights: jax.Array
  slot: jax.Array
  num_experts: int = struct.field(pytree_node=False)
  capacity: int | None = struct.field(pytree_node=False)

  @property
  def kept(self) -> jax.Array:
    """bool [G, S, K]: the choice is dispatched to its expert."""
    return self.slot >= 0

  @property
  def shape(self) -> tuple[int, int, int]:
    """(G, S, K)."""
    return self.expert_index.shape

  def buffer_index(self) -> jax.Array:
    """int32 [G, S, K]: row of each choice in an [E, G, C] expert buffer.

    Expert-major layout (e, g, c) -> e·G·C + g·C + c, so the flat buffer
    reshapes to [E, G·C, D] with no transpose. Dropped choices point one past
    the end (E·G·C), which gathers and scatters treat as a padding row.
    """
    if self.capacity is None:
      raise ValueError('buffer_index needs a capacity; this plan is dropless.')
    g, _, _ = self.shape
    c = self.capacity
    group = jnp.arange(g, dtype=jnp.int32)[:, None, None]
    row = self.expert_index * (g * c) + group * c + self.slot
    return jnp.where(self.kept, row, self.num_experts * g * c)

  def expert_sort_key(self) -> tuple[jax.Array, jax.Array]:
    """(key [G·S·K], group_sizes [E]) for sorting choices by expert.

    Unrouted choices get key E: they sort last and belong to no expert, so
    dropless layouts spend no compute on rows whose weight is 0 anyway.
    """
    e = self.num_experts
    key = jnp.where(self.kept, self.expert_index, e).reshape(-1)
    # A fused one-hot sum: the dropless path stays free of scatters.
    sizes = jnp.sum(jax.nn.one_hot(key, e, dtype=jnp.int32), axis=0)
    return key, sizes
