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

from moe_jax.core.plan import DROPPED
from moe_jax.errors import UserInputError


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
  onehot = jax.nn.one_hot(expert_index, num_experts, dtype=jnp.int32)
  onehot = onehot * routed[..., None].astype(jnp.int32)  # [G, S, K, E]
  # Rank-major order: every first choice precedes every second choice.
  rank_major = onehot.transpose(0, 2, 1, 3).reshape(g, k * s, num_experts)
  position = jnp.cumsum(rank_major, axis=1) - 1
  position = position.reshape(g, k, s, num_experts).transpose(0, 2, 1, 3)
  slot = jnp.sum(position * onehot, axis=-1)  # [G, S, K]
  kept = routed if capacity is None else routed & (slot < capacity)
  return jnp.where(kept, slot, DROPPED).astype(jnp.int32)
