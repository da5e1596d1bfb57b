"""What the routers share: top-k selection, jitter, and plan building.

Every router is a pure function with the signature

    router(logits [G, S, E], *, capacity, key, ...) -> (RoutingPlan, aux)

where `aux` holds the unweighted 'load_balance_loss' and 'z_loss' and the
routing metrics. A router chooses experts and gates; capacity and slots come
from the shared `capacity.assign_slots`, and moving tokens is the
dispatcher's job, so adding a router touches neither experts nor dispatchers.

All router math runs in float32 whatever the model dtype (Switch Transformer,
Fedus et al. 2021, Table 2: a bfloat16 router diverged). Randomness comes only
from the explicit `key`.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import capacity as capacity_lib
from moe_jax.core import losses
from moe_jax.core import metrics as metrics_lib
from moe_jax.core.plan import ROUTED, RoutingPlan

Router = Callable[..., tuple[RoutingPlan, dict[str, jax.Array]]]


def multiplicative_jitter(x: jax.Array, key: jax.Array,
                          eps: float) -> jax.Array:
  """Multiplies the router input by U(1-eps, 1+eps) noise (Switch, Sec. 2.4)."""
  noise = jax.random.uniform(key, x.shape, x.dtype, 1.0 - eps, 1.0 + eps)
  return x * noise


def top_k_experts(scores: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """The k largest scores over the last axis and their indices, descending.

  Ties go to the lower index. Without a mesh this is jax.lax.top_k. Under a
  mesh it is k argmax passes: the router runs on global arrays there, and
  the SPMD partitioner all-gathers the router scores across the batch for
  top_k (tests/test_parallel_moe.py checks for all-gathers), while it keeps
  argmax local. The passes cost O(k·E) per token: at E = 256, k = 8 about
  7x top_k's time on CPU, hence top_k where nothing is partitioned.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or not mesh.axis_names:
    values, indices = jax.lax.top_k(scores, k)
    return values, indices.astype(jnp.int32)
  values, indices = [], []
  for _ in range(k):
    index = jnp.argmax(scores, axis=-1)[..., None]
    values.append(jnp.take_along_axis(scores, index, axis=-1))
    indices.append(index)
    scores = jnp.where(
        jax.nn.one_hot(index[..., 0], scores.shape[-1], dtype=bool), -jnp.inf,
        scores)
  return jnp.concatenate(values, -1), jnp.concatenate(indices, -1)


def choose(scores: jax.Array, k: int, forced: jax.Array | None = None
           ) -> tuple[jax.Array, jax.Array]:
  """A router's selection: top_k_experts(scores, k), or under router replay
  the `forced` choices int [G, S, K] with their scores.

  Replay fixes which experts a token goes to and nothing else: the router
  still computes its scores, so gates, losses and metrics are its own, and
  the gates take gradients (moe_jax/analysis/replay.py).
  """
  if forced is None:
    return top_k_experts(scores, k)
  forced = forced.astype(jnp.int32)
  return jnp.take_along_axis(scores, forced, axis=-1), forced


def build_plan(logits: jax.Array, probs: jax.Array, expert_index: jax.Array,
               gates: jax.Array, routed: jax.Array,
               capacity: int | None,
               balance_fn: Callable = losses.load_balance_loss,
               slot: jax.Array | None = None,
               num_null: int = 0) -> tuple[RoutingPlan, dict]:
  """Applies capacity to a router's choices and computes losses and metrics.

  Args:
    logits: float32 [G, S, E].
    probs: float32 [G, S, E] the distribution the balance loss acts on.
    expert_index: int [G, S, K] chosen experts.
    gates: float32 [G, S, K] combine weights before dropping.
    routed: bool [G, S, K] choices the router means to send.
    capacity: C, or None for dropless.
    balance_fn: (probs, expert_index) -> load-balance loss; the default
      pools f and P over all groups (see losses.scoped_load_balance_loss).
    slot: int32 [G, S, K] slots from another priority rule; default: the
      rank-major, position-ordered capacity.assign_slots.
    num_null: N null experts, the last N of the E + N router outputs
      (AdaMoE, MoE++). A choice of one is not sent: it takes no capacity
      slot and no dropless row, and the plan's num_experts is the real E.
      Its expert_index (>= E) stays in the plan as the record of the choice.
      The balance loss spans all E + N outputs, as AdaMoE's does, so at
      balance a null expert gets a real expert's share.
  """
  num_experts = logits.shape[-1] - num_null
  expert_index = expert_index.astype(jnp.int32)
  real = expert_index < num_experts
  sent = routed & real
  if slot is None:
    slot = capacity_lib.assign_slots(expert_index, sent, num_experts,
                                     capacity)
  kept = slot >= 0
  plan = RoutingPlan(
      expert_index=expert_index,
      combine_weights=jnp.where(kept, gates, 0.0).astype(jnp.float32),
      slot=slot, num_experts=num_experts, capacity=capacity)
  aux = {
      'load_balance_loss': balance_fn(probs, expert_index),
      'z_loss': losses.z_loss(logits),
      **metrics_lib.routing_metrics(
          probs, jnp.where(real, expert_index, 0), sent, kept,
          num_experts=num_experts),
      ROUTED: jax.lax.stop_gradient(sent),
  }
  if num_null:
    chose = jax.lax.stop_gradient(routed)
    aux['null_fraction'] = (jnp.sum(chose & ~real) /
                            jnp.maximum(jnp.sum(chose), 1)).astype(jnp.float32)
    aux.update(metrics_lib.experts_per_token(sent))
  return plan, aux


def without_null_choices(expert_index: jax.Array, gates: jax.Array,
                         num_experts: int, renormalize: bool) -> jax.Array:
  """Gates with null-expert choices zeroed (AdaMoE, Zeng et al. 2024).

  Args:
    expert_index: int [G, S, K] over E + N router outputs (>= E: null).
    gates: float [G, S, K] the router's gates over all K choices.
    num_experts: E.
    renormalize: True: divide by the sum over the token's real choices, so
      they sum to 1 whenever there is one (AdaMoE's Mixtral code renormalises
      over the true experts only); False: keep the gates as they are.
  """
  gates = jnp.where(expert_index < num_experts, gates, 0.0)
  if not renormalize:
    return gates
  total = jnp.sum(gates, axis=-1, keepdims=True)
  return gates / jnp.where(total > 0, total, 1.0)
