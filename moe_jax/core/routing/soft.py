"""Soft MoE (Puigcerver et al. 2023, "From Sparse to Soft Mixtures of
Experts"): experts see weighted averages of tokens, and nothing is dropped.

With logits X·Φ [S, N] over N = E·P slots (P per expert), a group of S
tokens X [S, D] becomes

  dispatch  D = softmax over tokens (each column)   slots  X̃ = Dᵀ X  [N, D]
  experts   Ỹ_j = f_{e(j)}(X̃_j),  e(j) = j // P
  combine   C = softmax over slots (each row)       Y = C Ỹ           [S, D]

(paper Eqs. 1-3). Every expert gets exactly P slots per group, so the load
is balanced by construction and no auxiliary loss exists. The decision is
not a set of (expert, weight, slot) triples, so it is its own plan, SoftPlan
(the dispatch and combine weights), moved by its own dense dispatcher
(SOFT_DISPATCH: slots in the padded layout [E, G·P, D]). moe_apply runs it
through `run_experts` like any plan, so under a mesh the slots travel to
their experts by all-to-all.

Causality. A slot averages every token of its group, so in a decoder the
output at t would read later tokens (the paper uses it in encoders and
names auto-regressive decoding as open, Sec. 6). The causal mode cuts each
sequence into chunks of Q positions, builds chunk c's slots from chunk c's
tokens only, and lets tokens of chunk c + 1 combine them; chunk 0 reads no
slots (MoE output 0, the residual carries it). Every slot a token reads was
built from earlier positions, and its combine weights come from its own
logits, so the output at t depends on tokens <= t only. The price: a token
reaches the experts one chunk late, through the average of a past chunk.
With E·P = Q the expert FLOPs equal top-1 routing's.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from flax import struct

from moe_jax.core.dispatch.base import Dispatcher, ExpertInputs, run_local
from moe_jax.core.metrics import entropy
from moe_jax.core.routing import registry
from moe_jax.errors import check_positive


@dataclasses.dataclass(frozen=True)
class Options:
  """moe.router_options.soft.

  Attributes:
    slots_per_expert: P, slots per expert and group (chunk, when causal);
      E·P = causal_chunk gives top-1's expert FLOPs.
  """

  slots_per_expert: int = 1

  def __post_init__(self):
    check_positive('router_options.soft.slots_per_expert',
                   self.slots_per_expert)


@struct.dataclass
class SoftPlan:
  """Soft MoE's routing: how slots mix tokens and tokens mix slots.

  Attributes:
    dispatch: float32 [G, NC, Q, N], softmax over the Q tokens of each chunk
      (NC = 1, Q = S when not causal), per slot.
    combine: float32 [G, S, N], softmax over the N = E·P slots, per token.
    num_experts: E (static); slot j belongs to expert j // P.
    causal: chunk c reads chunk c - 1's slots (static).
  """

  dispatch: jax.Array
  combine: jax.Array
  num_experts: int = struct.field(pytree_node=False)
  causal: bool = struct.field(pytree_node=False)


def soft_metrics(dispatch: jax.Array, combine: jax.Array,
                 num_experts: int) -> dict[str, jax.Array]:
  """What the layer logs: how widely slots and tokens mix (no gradient).

  Args:
    dispatch: float32 [..., T, N], softmax over the T tokens a slot mixes.
    combine: float32 [G, S, N], softmax over slots.

  Returns:
    dispatch_entropy: mean over slots of exp(entropy) / T, the share of its
      tokens a slot effectively averages (1/T: one token, 1: uniform).
    combine_entropy: mean over tokens of exp(entropy) / N, the same for the
      slots a token reads.
    expert_fraction [E], max_violation, dropped_fraction [1],
    unrouted_fraction, dead_expert_fraction: the routers' load metrics; by
      construction uniform, 0, 0, 0 and 0.
  """
  dispatch, combine = jax.lax.stop_gradient((dispatch, combine))
  t, n = dispatch.shape[-2:]
  zero = jnp.zeros((), jnp.float32)
  return {
      'dispatch_entropy': jnp.mean(jnp.exp(entropy(dispatch, -2))) / t,
      'combine_entropy': jnp.mean(jnp.exp(entropy(combine, -1))) / n,
      'expert_fraction': jnp.full((num_experts,), 1.0 / num_experts),
      'max_violation': zero,
      'dropped_fraction': jnp.zeros((1,), jnp.float32),
      'unrouted_fraction': zero,
      'dead_expert_fraction': zero,
  }


def _to_experts(slots: jax.Array, num_experts: int) -> jax.Array:
  """[B', N, D] slots -> [E, B'·P, D]: slot j goes to expert j // P."""
  b, n, d = slots.shape
  p = n // num_experts
  x = slots.reshape(b, num_experts, p, d).transpose(1, 0, 2, 3)
  return x.reshape(num_experts, b * p, d)


def _from_experts(y: jax.Array, num_slots: int) -> jax.Array:
  """Inverse of _to_experts: [E, B'·P, D] -> [B', N, D]."""
  e, bp, d = y.shape
  p = num_slots // e
  return y.reshape(e, bp // p, p, d).transpose(1, 0, 2, 3).reshape(-1,
                                                                   num_slots, d)


def soft_route(logits: jax.Array, *, num_experts: int, causal: bool = False,
               chunk: int | None = None) -> tuple[SoftPlan, dict]:
  """The Soft MoE plan from slot logits.

  Args:
    logits: float32 [G, S, N] = X·Φ, N = E·P slots.
    num_experts: E; must divide N.
    causal: chunked, one-chunk-delayed mixing (see the module docstring).
    chunk: Q, positions per chunk when causal; must divide S.

  Returns:
    (SoftPlan, soft_metrics).
  """
  g, s, n = logits.shape
  q = chunk if causal else s
  # Dispatch mixes the Q tokens of a chunk (all S when not causal).
  dispatch = jax.nn.softmax(logits.reshape(g, s // q, q, n), axis=2)
  combine = jax.nn.softmax(logits, axis=-1)  # over slots
  return (SoftPlan(dispatch, combine, num_experts, causal),
          soft_metrics(dispatch, combine, num_experts))


def dispatch(x: jax.Array, plan: SoftPlan):
  """[G, S, D] tokens -> slots in the padded layout [E, G·NC·P, D]."""
  g, nc, q, n = plan.dispatch.shape
  d = x.shape[-1]
  slots = jnp.einsum('gcqn,gcqd->gcnd', plan.dispatch.astype(x.dtype),
                     x.reshape(g, nc, q, d))
  return ExpertInputs(_to_experts(slots.reshape(g * nc, n, d),
                                  plan.num_experts)), None


def combine(y: jax.Array, plan: SoftPlan, ctx) -> jax.Array:
  """[E, G·NC·P, D] slot outputs -> [G, S, D], each token a softmax-weighted
  sum of the slots it may read."""
  del ctx
  g, nc, q, n = plan.dispatch.shape
  slot_out = _from_experts(y, n).reshape(g, nc, n, y.shape[-1])
  if plan.causal:  # Chunk c reads chunk c - 1's slots; chunk 0 reads none.
    slot_out = jnp.pad(slot_out[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
  out = jnp.einsum('gcqn,gcnd->gcqd',
                   plan.combine.reshape(g, nc, q, n).astype(y.dtype), slot_out)
  return out.reshape(g, nc * q, -1)


# Fixed-size per-expert buffers (P slots per group or chunk), so expert
# parallelism exchanges them like capacity buffers. Not in DISPATCHERS: it
# moves SoftPlans only, so `moe.dispatcher` cannot name it.
SOFT_DISPATCH = Dispatcher('soft', dispatch, combine, needs_capacity=True)


def soft_moe(x: jax.Array, logits: jax.Array, expert_params: dict[str, jax.Array],
             expert_fn: Callable[..., jax.Array], *, num_experts: int,
             causal: bool = False, chunk: int | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Soft MoE over groups of tokens, on one device: route, dispatch, experts,
  combine.

  Args:
    x: [G, S, D] tokens in the compute dtype.
    logits: float32 [G, S, N] = X·Φ, N = E·P slots.
    expert_params: stacked expert weights [E, ...] (core/experts/).
    expert_fn: (params, ExpertInputs) -> outputs, padded layout [E, M, D].
    num_experts: E; must divide N.
    causal: chunked, one-chunk-delayed mixing (see the module docstring).
    chunk: Q, positions per chunk when causal; must divide S.

  Returns:
    y [G, S, D] in x's dtype, and soft_metrics.
  """
  plan, aux = soft_route(logits, num_experts=num_experts, causal=causal,
                         chunk=chunk)
  return run_local(x, plan, expert_params, SOFT_DISPATCH, expert_fn), aux


def _route(inputs, config, *, train, capacity, key, balance_fn):
  del train, capacity, key, balance_fn  # No drops, no noise, no balance loss.
  plan, aux = soft_route(inputs.logits, num_experts=config.num_experts,
                         causal=config.causal_routing,
                         chunk=config.causal_chunk)
  aux['load_balance_loss'] = aux['z_loss'] = jnp.zeros((), jnp.float32)
  return plan, aux


def _passes_per_token(config, group_size: int) -> float:
  """Each of the E·P slots of a group (chunk, when causal) runs once: E·P/S."""
  span = (min(group_size, config.causal_chunk) if config.causal_routing
          else group_size)
  return config.num_experts * config.router_options.slots_per_expert / span


SPEC = registry.register(registry.RouterSpec(
    name='soft', route=_route, options=Options, group_wide=True,
    capacity=lambda config, group_size, cf: None,
    passes_per_token=_passes_per_token,
    router_outputs=lambda config: (
        config.num_experts * config.router_options.slots_per_expert),
    dispatcher=SOFT_DISPATCH, balance_loss=False,
    legacy_fields=(('slots_per_expert', 'slots_per_expert'),)))
