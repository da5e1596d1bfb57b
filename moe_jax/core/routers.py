"""Routers: router logits in, (RoutingPlan, aux) out.

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
from moe_jax.core.plan import RoutingPlan
from moe_jax.errors import UserInputError

SECOND_POLICIES = ('all', 'random', 'sampling')

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


def build_plan(logits: jax.Array, probs: jax.Array, expert_index: jax.Array,
               gates: jax.Array, routed: jax.Array,
               capacity: int | None,
               balance_fn: Callable = losses.load_balance_loss,
               slot: jax.Array | None = None) -> tuple[RoutingPlan, dict]:
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
  """
  num_experts = logits.shape[-1]
  expert_index = expert_index.astype(jnp.int32)
  if slot is None:
    slot = capacity_lib.assign_slots(expert_index, routed, num_experts,
                                     capacity)
  kept = slot >= 0
  plan = RoutingPlan(
      expert_index=expert_index,
      combine_weights=jnp.where(kept, gates, 0.0).astype(jnp.float32),
      slot=slot, num_experts=num_experts, capacity=capacity)
  aux = {
      'load_balance_loss': balance_fn(probs, expert_index),
      'z_loss': losses.z_loss(logits),
      **metrics_lib.routing_metrics(probs, expert_index, routed, kept),
  }
  return plan, aux


def switch_top1(logits: jax.Array, *, capacity: int | None,
                key: jax.Array | None = None,
                balance_fn: Callable = losses.load_balance_loss
                ) -> tuple[RoutingPlan, dict]:
  """Switch Transformer top-1 routing (Fedus et al. 2021).

  The gate is the raw softmax probability of the chosen expert, not
  renormalised: renormalising one choice makes the gate exactly 1 and cuts
  the router off from the task gradient.
  """
  del key  # Deterministic given the logits.
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  expert_index = jnp.argmax(probs, axis=-1)[..., None]  # [G, S, 1]
  gates = jnp.take_along_axis(probs, expert_index, axis=-1)
  routed = jnp.ones(gates.shape, bool)
  return build_plan(logits, probs, expert_index, gates, routed, capacity,
                    balance_fn)


def gshard_top2(logits: jax.Array, *, capacity: int | None,
                key: jax.Array | None = None,
                second_policy: str = 'random',
                balance_fn: Callable = losses.load_balance_loss
                ) -> tuple[RoutingPlan, dict]:
  """GShard top-2 routing (Lepikhin et al. 2020, Algorithm 1).

  Gates are renormalised over the pair: g_i / (g1 + g2). The second choice
  follows `second_policy`:
    'all': always routed;
    'random': routed only if 2·g2 > U(0, 1), so weak second choices rarely
      take capacity;
    'sampling': e2 is sampled ∝ p over the experts other than e1, and routed.
  """
  if second_policy not in SECOND_POLICIES:
    raise UserInputError(
        f'second_policy={second_policy!r} is not one of {SECOND_POLICIES}.')
  if second_policy != 'all' and key is None:
    raise UserInputError(
        f"second_policy={second_policy!r} needs a PRNG key; pass key=... or "
        "use second_policy='all' (the deterministic eval policy).")
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  top_p, top_e = top_k_experts(probs, 2)
  e1, p1 = top_e[..., 0], top_p[..., 0]
  if second_policy == 'sampling':
    without_e1 = jnp.where(
        jax.nn.one_hot(e1, probs.shape[-1], dtype=bool), -jnp.inf,
        jnp.log(jnp.maximum(probs, 1e-30)))
    e2 = jax.random.categorical(key, without_e1, axis=-1)
    p2 = jnp.take_along_axis(probs, e2[..., None], axis=-1)[..., 0]
  else:
    e2, p2 = top_e[..., 1], top_p[..., 1]
  denom = p1 + p2
  gates = jnp.stack([p1 / denom, p2 / denom], axis=-1)
  routed_2 = jnp.ones(e1.shape, bool)
  if second_policy == 'random':
    routed_2 = 2.0 * gates[..., 1] > jax.random.uniform(key, e1.shape)
  routed = jnp.stack([jnp.ones_like(routed_2), routed_2], axis=-1)
  expert_index = jnp.stack([e1, e2], axis=-1)
  return build_plan(logits, probs, expert_index, gates, routed, capacity,
                    balance_fn)


def top_k(logits: jax.Array, *, capacity: int | None, k: int,
          key: jax.Array | None = None,
          balance_fn: Callable = losses.load_balance_loss,
          renormalize: bool = True) -> tuple[RoutingPlan, dict]:
  """Mixtral-style top-k: softmax over the k largest logits (Jiang et al. 2024).

  Equal to the full softmax renormalised over the top k. With k=1 the gate is
  always 1 and the router learns only from the auxiliary losses; use
  `switch_top1` for a router that the task gradient reaches.

  renormalize=False keeps the full-softmax probabilities of the chosen k as
  gates, so they sum to less than 1 (DeepSeekMoE, Qwen1.5-MoE and OLMoE;
  Hugging Face's `norm_topk_prob=False`).
  """
  del key
  logits = logits.astype(jnp.float32)
  top_logits, expert_index = top_k_experts(logits, k)
  probs = jax.nn.softmax(logits, axis=-1)
  if renormalize:
    gates = jax.nn.softmax(top_logits, axis=-1)
  else:
    gates = jnp.take_along_axis(probs, expert_index, axis=-1)
  routed = jnp.ones(gates.shape, bool)
  return build_plan(logits, probs, expert_index, gates, routed, capacity,
                    balance_fn)
