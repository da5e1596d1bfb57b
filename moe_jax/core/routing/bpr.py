"""Batch-prioritised routing (Riquelme et al. 2021, V-MoE, Sec. 4.1).

Token-choice top-k on softmax probabilities (raw gates, as in V-MoE), but
capacity goes to tokens in order of their top gate, not their position:
within each rank k, the tokens of a group claim slots from the most to the
least confident. When capacity is short, the confident tokens are kept.

Causality: a token's slot depends on the gates of every token of its group,
later ones included, so with drops a later token can evict an earlier one.
Like top-2's second choices, but for first choices too. Without drops
(ample capacity, or a dropless dispatcher) it equals plain top-k.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import capacity as capacity_lib
from moe_jax.core import losses
from moe_jax.core.plan import RoutingPlan
from moe_jax.core.routing import registry
from moe_jax.core.routing.common import build_plan, choose


def prioritised_slots(expert_index: jax.Array, routed: jax.Array,
                      priority: jax.Array, num_experts: int,
                      capacity: int | None) -> jax.Array:
  """assign_slots with tokens taken in descending `priority` order.

  Args:
    expert_index, routed: [G, S, K] as for capacity.assign_slots.
    priority: float [G, S]; higher claims capacity first (ties: position).
  """
  order = jnp.argsort(-priority, axis=1, stable=True)  # [G, S]
  inverse = jnp.argsort(order, axis=1)
  take = lambda a, idx: jnp.take_along_axis(a, idx[..., None], axis=1)
  slot = capacity_lib.assign_slots(take(expert_index, order),
                                   take(routed, order), num_experts, capacity)
  return take(slot, inverse)


def bpr_top_k(logits: jax.Array, *, capacity: int | None, k: int,
              key: jax.Array | None = None,
              balance_fn: Callable = losses.load_balance_loss,
              replay: jax.Array | None = None
              ) -> tuple[RoutingPlan, dict]:
  """Top-k with batch-prioritised capacity (V-MoE).

  Args:
    logits: float [G, S, E]; capacity: C or None; k: K.
  """
  del key
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  gates, expert_index = choose(probs, k, replay)
  routed = jnp.ones(gates.shape, bool)
  slot = prioritised_slots(expert_index.astype(jnp.int32), routed,
                           gates[..., 0], logits.shape[-1], capacity)
  return build_plan(logits, probs, expert_index, gates, routed, capacity,
                    balance_fn, slot=slot)


def _route(inputs, config, *, train, capacity, key, balance_fn):
  del train
  return bpr_top_k(inputs.logits, capacity=capacity, k=config.top_k, key=key,
                   balance_fn=balance_fn, replay=inputs.replay)


SPEC = registry.register(registry.RouterSpec(name='bpr', route=_route,
                                             replayable=True))
