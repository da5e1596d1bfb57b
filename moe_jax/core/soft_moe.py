"""Soft MoE (Puigcerver et al. 2023, "From Sparse to Soft Mixtures of
Experts"): experts see weighted averages of tokens, and nothing is dropped.

With logits X·Φ [S, N] over N = E·P slots (P per expert), a group of S
tokens X [S, D] becomes

  dispatch  D = softmax over tokens (each column)   slots  X̃ = Dᵀ X  [N, D]
  experts   Ỹ_j = f_{e(j)}(X̃_j),  e(j) = j // P
  combine   C = softmax over slots (each row)       Y = C Ỹ           [S, D]

(paper Eqs. 1-3). Every expert gets exactly P slots per group, so the load
is balanced by construction and no auxiliary loss exists. The decision is
not a set of (expert, weight, slot) triples, so it does not fit RoutingPlan:
this is a dense-mixing path beside the dispatchers, sharing only the expert
functions.

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

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core.dispatch.base import ExpertInputs
from moe_jax.core.metrics import entropy


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


def soft_moe(x: jax.Array, logits: jax.Array, expert_params: dict[str, jax.Array],
             expert_fn: Callable[..., jax.Array], *, num_experts: int,
             causal: bool = False, chunk: int | None = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Soft MoE over groups of tokens.

  Args:
    x: [G, S, D] tokens in the compute dtype.
    logits: float32 [G, S, N] = X·Φ, N = E·P slots.
    expert_params: stacked expert weights [E, ...] (core/experts.py).
    expert_fn: (params, ExpertInputs) -> outputs, padded layout [E, M, D].
    num_experts: E; must divide N.
    causal: chunked, one-chunk-delayed mixing (see the module docstring).
    chunk: Q, positions per chunk when causal; must divide S.

  Returns:
    y [G, S, D] in x's dtype, and soft_metrics.
  """
  g, s, d = x.shape
  n = logits.shape[-1]
  q = chunk if causal else s
  nc = s // q
  # Dispatch mixes the Q tokens of a chunk (all S when not causal).
  chunk_logits = logits.reshape(g, nc, q, n)
  dispatch = jax.nn.softmax(chunk_logits, axis=2)  # over tokens
  combine = jax.nn.softmax(logits, axis=-1)  # over slots
  slots = jnp.einsum('gcqn,gcqd->gcnd', dispatch.astype(x.dtype),
                     x.reshape(g, nc, q, d))
  ye = expert_fn(expert_params,
                 ExpertInputs(_to_experts(slots.reshape(g * nc, n, d),
                                          num_experts)))
  slot_out = _from_experts(ye, n).reshape(g, nc, n, d)
  if causal:  # Chunk c reads chunk c - 1's slots; chunk 0 reads none.
    slot_out = jnp.pad(slot_out[:, :-1], ((0, 0), (1, 0), (0, 0), (0, 0)))
  y = jnp.einsum('gcqn,gcnd->gcqd',
                 combine.reshape(g, nc, q, n).astype(x.dtype), slot_out)
  return y.reshape(g, s, d), soft_metrics(dispatch, combine, num_experts)
