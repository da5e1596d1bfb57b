"""Expert capacity: how many tokens of a group each expert takes.

Convention (the default, as in vmoe and MaxText): capacity is per choice,

    C = ceil(K · S · capacity_factor / E),

so top-1 and top-2 at the same capacity factor both have room for every
choice under perfectly balanced routing. `scale_with_k=False` gives the
Switch Transformer / flaxformer convention C = round(S · capacity_factor / E)
(top-2 at cf 1.0 then holds at most half the second choices); an ablation
comparing top-1 with top-2 must say which one it holds fixed.

C is clamped to [min_capacity, S]: an expert never receives more than S
choices from one group because a token picks an expert at most once, so room
beyond S is pure padding.

Priority: all first choices (in sequence order) claim slots before any second
choice, and so on for each rank k (GShard, Lepikhin et al. 2020, Alg. 1).
Choices that find their expert full are dropped.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from moe_jax.core.plan import DROPPED, expert_counts
from moe_jax.errors import UserInputError

# (E + 1)·K·S must stay below this for the packed int32 sort key; larger
# groups sort (expert, position) pairs instead.
_PACKED_KEY_LIMIT = 2**31


def expert_capacity(group_size: int, num_experts: int, top_k: int,
                    capacity_factor: float, min_capacity: int = 1,
                    scale_with_k: bool = True) -> int:
  """Returns the expert capacity C for one group (see the module docstring)."""
  if not capacity_factor > 0:
    raise UserInputError(
        f'capacity_factor={capacity_factor} must be > 0; use e.g. 1.25 for '
        'training and 2.0 for eval, or the dropless dispatcher for no cap.')
  if scale_with_k:
    c = math.ceil(top_k * group_size * capacity_factor / num_experts)
  else:
    c = round(group_size * capacity_factor / num_experts)
  return int(min(max(c, min_capacity, 1), group_size))


def assign_slots(expert_index: jax.Array, routed: jax.Array, num_experts: int,
                 capacity: int | None) -> jax.Array:
  """Gives each routed choice a slot in its expert's buffer, rank by rank.

  Args:
    expert_index: int [G, S, K] chosen experts, column k is the k-th choice.
    routed: bool [G, S, K]; False for choices the router decided not to send
      (e.g. GShard's random second-expert policy). They take no capacity.
    num_experts: E.
    capacity: C, or None for no limit (dropless).

  Returns:
    int32 [G, S, K]: the slot in [0, C), or DROPPED where the choice was not
    routed or found its expert full.
  """
  g, s, k = expert_index.shape
  n = k * s
  # Rank-major order: every first choice precedes every second choice.
  # Unrouted choices get expert E, past every real one, so they take no slot.
  expert = jnp.where(routed, expert_index, num_experts).astype(jnp.int32)
  expert = expert.transpose(0, 2, 1).reshape(g, n)
  # A choice's slot is its rank among its expert's choices in that order.
  # One sort of (expert, position) per group finds it in O(K·S log K·S);
  # a cumulative sum over one-hot [G, K·S, E] costs O(K·S·E), which at
  # E = 64, K = 8 took 14x as long on CPU. Packed into one int32 key, the
  # sort moves a single array.
  position = jnp.arange(n, dtype=jnp.int32)
  if (num_experts + 1) * n < _PACKED_KEY_LIMIT:
    packed = jax.lax.sort(expert * n + position, dimension=1)
    sorted_expert, sorted_position = packed // n, packed % n
  else:
    order = jnp.argsort(expert, axis=1, stable=True)
    sorted_expert = jnp.take_along_axis(expert, order, axis=1)
    sorted_position = order.astype(jnp.int32)
  counts = expert_counts(expert, num_experts + 1)  # [G, E + 1]
  first = jnp.cumsum(counts, axis=1) - counts  # Sorted index of e's first.
  rank = position[None] - jnp.take_along_axis(first, sorted_expert, axis=1)
  # Back to rank-major order: a per-group scatter of the ranks (vmapped,
  # like expert_counts, so the group axis stays a batch dimension).
  slot = jax.vmap(lambda p, r: jnp.zeros((n,), jnp.int32).at[p].set(r))(
      sorted_position, rank)
  slot = slot.reshape(g, k, s).transpose(0, 2, 1)  # [G, S, K]
  kept = routed if capacity is None else routed & (slot < capacity)
  return jnp.where(kept, slot, DROPPED).astype(jnp.int32)
