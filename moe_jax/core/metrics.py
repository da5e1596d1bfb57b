"""Routing metrics researchers look at for each MoE layer.

All are computed from arrays the router already has; none takes a gradient
(they are wrapped in stop_gradient) so they can be logged freely.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core.plan import expert_counts


def entropy(p: jax.Array, axis: int = -1) -> jax.Array:
  """Entropy in nats of distributions along `axis` (0·log 0 taken as 0)."""
  return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-30)), axis=axis)


def routing_metrics(probs: jax.Array, expert_index: jax.Array,
                    routed: jax.Array, kept: jax.Array,
                    num_experts: int | None = None) -> dict[str, jax.Array]:
  """Load, drop and confidence statistics of one routing decision.

  Args:
    probs: float [G, S, E] router probabilities.
    expert_index: int [G, S, K] chosen experts.
    routed: bool [G, S, K] the router meant to send the choice (False for a
      second choice a random policy skipped).
    kept: bool [G, S, K] the choice was dispatched (routed and within
      capacity).
    num_experts: E, the experts the load is counted over; default the last
      axis of probs (smaller when probs also spans null experts).

  Returns:
    expert_fraction: [E] share of routed choices per expert (sums to 1).
    dropped_fraction: [K] share of tokens whose k-th choice was routed but
      dropped for lack of capacity.
    unrouted_fraction: share of tokens that reached no expert at all (their
      MoE output is 0; only the residual carries them).
    router_entropy: mean over tokens of the entropy of probs, in nats.
    top_gate: mean over tokens of max_e probs (router confidence).
    max_violation: MaxVio = max_e load_e / mean_e load_e - 1 (Wang et al.
      2024), with load the routed choices per expert, before capacity.
    dead_expert_fraction: share of experts that received no routed choice.
  """
  probs, expert_index, routed, kept = jax.lax.stop_gradient(
      (probs.astype(jnp.float32), expert_index, routed, kept))
  num_experts = num_experts or probs.shape[-1]
  top_k = expert_index.shape[-1]
  routed_f = routed.astype(jnp.float32)
  rows = expert_index.shape[0] if expert_index.ndim > 1 else 1
  load = jnp.sum(expert_counts(expert_index.reshape(rows, -1), num_experts,
                               routed_f.reshape(rows, -1)), axis=0)  # [E]
  total = jnp.maximum(jnp.sum(load), 1.0)
  dropped = (routed & ~kept).astype(jnp.float32).reshape(-1, top_k)
  return {
      'expert_fraction': load / total,
      'dropped_fraction': jnp.mean(dropped, axis=0),
      'unrouted_fraction': jnp.mean(~jnp.any(kept, axis=-1)),
      'router_entropy': jnp.mean(entropy(probs)),
      'top_gate': jnp.mean(jnp.max(probs, axis=-1)),
      'max_violation': jnp.max(load) / (total / num_experts) - 1.0,
      'dead_expert_fraction': jnp.mean(load == 0),
  }


def experts_per_token(routed: jax.Array) -> dict[str, jax.Array]:
  """How many experts each token was routed to, for routers where it varies.

  Args:
    routed: bool [G, S, K] the router sent the choice to a real expert
      (before capacity: the router's decision, not what capacity let through;
      drops are in dropped_fraction).

  Returns:
    experts_per_token: [K+1] share of tokens routed to 0, 1, ..., K experts
      (the name and layout expert choice uses, there with K = E).
    experts_per_token_mean: the mean of that histogram.
  """
  count = jnp.sum(jax.lax.stop_gradient(routed), axis=-1).reshape(-1)
  k = routed.shape[-1]
  return {
      'experts_per_token': jnp.mean(
          jax.nn.one_hot(count, k + 1, dtype=jnp.float32), axis=0),
      'experts_per_token_mean': jnp.mean(count.astype(jnp.float32)),
  }
