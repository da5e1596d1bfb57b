"""Uniform (forced-balanced) routing, for throughput and memory tests.

Token s of a group (position s, 0-based) goes to experts (s·K + j) mod E,
j = 0..K-1, whatever the logits, with gates 1/K. The group's S·K choices
then walk round the experts in turn, so each expert gets exactly S·K/E of
them when E divides S·K (and ⌊S·K/E⌋ or ⌈S·K/E⌉ otherwise), and a token's K
experts are distinct because K <= E. This is the balanced load a tuned
router only approaches: time and memory measured with it are the
best case of a dispatcher (MegaBlocks offers the same for its benchmarks,
assigning token i to expert i mod E).

Nothing the router computes reaches the task loss: the gates are constants,
so router_kernel learns only from the z-loss (the logits are computed and
logged as usual, so the cost of the router matmul stays in the timing). The
Switch balance loss is 1 at this load whatever the probabilities, with no
useful gradient, so the spec says it has no balance loss to weight.

Causal: the experts, gates and drops of token s depend on its position
only, never on another token, so a later token cannot change an earlier
one's output (group_wide=False; tests/test_core_uniform.py checks it).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import losses
from moe_jax.core.plan import RoutingPlan
from moe_jax.core.routing import registry
from moe_jax.core.routing.common import build_plan


def uniform_experts(group_size: int, k: int, num_experts: int) -> jax.Array:
  """int32 [S, K]: (s·K + j) mod E, the experts of position s."""
  choice = jnp.arange(group_size * k, dtype=jnp.int32).reshape(group_size, k)
  return choice % num_experts


def uniform_route(logits: jax.Array, *, capacity: int | None, k: int,
                  key: jax.Array | None = None,
                  balance_fn: Callable = losses.load_balance_loss
                  ) -> tuple[RoutingPlan, dict]:
  """Forced-balanced routing: position s -> experts (s·K + j) mod E.

  Args:
    logits: float [G, S, E]; read only for the losses and metrics.
    capacity: C, or None for dropless.
    k: K <= E.
    key: unused.
    balance_fn: the load-balance loss (constant here, see the module doc).

  Returns:
    (plan, aux) as every router; gates are 1/K before capacity.
  """
  del key
  logits = logits.astype(jnp.float32)
  g, s, e = logits.shape
  expert_index = jnp.broadcast_to(uniform_experts(s, k, e), (g, s, k))
  gates = jnp.full((g, s, k), 1.0 / k, jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  routed = jnp.ones((g, s, k), bool)
  return build_plan(logits, probs, expert_index, gates, routed, capacity,
                    balance_fn)


def _route(inputs, config, *, train, capacity, key, balance_fn):
  del train
  return uniform_route(inputs.logits, capacity=capacity, k=config.top_k,
                       key=key, balance_fn=balance_fn)


SPEC = registry.register(registry.RouterSpec(
    name='uniform', route=_route, balance_loss=False,
    routes_by_position=True))
