"""Expert choice routing (Zhou et al. 2022, "Mixture-of-Experts with Expert
Choice Routing"), in a whole-group and a lookahead-free (causal) form.

Experts pick tokens instead of tokens picking experts: with affinities
P = softmax(logits) over experts [G, S, E], each expert takes its C
highest-affinity tokens of the group, C = ceil(S·c/E) (Zhou et al. Eq. 1;
c = 2 matches top-2 compute). A token may get 0..E experts, every expert
is exactly full, and no balance loss is needed.

The plan fits RoutingPlan with K = E: choice k of a token *is* expert k, its
slot is the token's rank in expert k's pick (or DROPPED), and its weight is
P[token, k]. So neither dispatchers nor experts change (the index dispatcher
does materialise x once per choice, [G, S, E, D]; fine at E ≤ 64).

Causality. In a decoder, choosing over a whole sequence lets token t's
routing depend on later tokens (whether a later token outbids t for a
slot), which leaks the future; an abnormally low training loss is the
symptom (Zhou et al. note this; see also MOE_REFERENCE.md). The causal mode
decides for token t with tokens ≤ t only:

  * candidate: t is among the top ceil(n·C_q/Q) of the n = min(t+1, Q) most
    recent tokens (positions t-Q+1..t) by P[:, e] — a running quantile:
    the expert takes the best C_q/Q fraction of what it has seen lately;
  * buffer: positions are cut into chunks of Q; expert e takes its
    candidates first come, first served, up to C_q per chunk (a cumulative
    count, which only looks back).

Both rules read only P at positions ≤ t, and P at a position depends only
on the router input there, so the MoE output at t is a function of tokens
≤ t. The cost: selection is against a window, not the whole group, and
a chunk's buffer can fill before its end.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import capacity as capacity_lib
from moe_jax.core import losses
from moe_jax.core import metrics as metrics_lib
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.core.plan import DROPPED, ROUTED, RoutingPlan
from moe_jax.core.routing import registry
from moe_jax.errors import UserInputError


def group_choice(probs: jax.Array, capacity: int) -> tuple[jax.Array, jax.Array]:
  """Each expert takes its top-C tokens of the group (non-causal).

  Args:
    probs: float32 [G, S, E].
    capacity: C <= S.

  Returns:
    (chosen bool [G, S, E], slot int32 [G, S, E]: rank of the token in the
    expert's pick, DROPPED where not chosen).
  """
  g, s, e = probs.shape
  # top_k along S is local to a group, so it stays on the group's device.
  _, token = jax.lax.top_k(jnp.swapaxes(probs, 1, 2), capacity)  # [G, E, C]
  gi = jnp.arange(g)[:, None, None]
  ei = jnp.arange(e)[None, :, None]
  rank = jnp.broadcast_to(jnp.arange(capacity, dtype=jnp.int32), token.shape)
  slot = jnp.full((g, e, s), DROPPED, jnp.int32).at[gi, ei, token].set(rank)
  slot = jnp.swapaxes(slot, 1, 2)
  return slot >= 0, slot


def window_rank(probs: jax.Array, window: int) -> jax.Array:
  """int32 [G, S, E]: how many of the window-1 tokens before t (same group)
  have P[:, e] >= P[t, e]. Earlier tokens win ties, so ranks are distinct."""
  s = probs.shape[1]
  rank = jnp.zeros(probs.shape, jnp.int32)
  for j in range(1, min(window, s)):
    # Token t compared with t - j; positions before the group start never win.
    earlier = jnp.pad(probs[:, :s - j], ((0, 0), (j, 0), (0, 0)),
                      constant_values=-jnp.inf)
    rank += (earlier >= probs).astype(jnp.int32)
  return rank


def causal_choice(probs: jax.Array, chunk: int,
                  chunk_capacity: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Lookahead-free expert choice (see the module docstring).

  Args:
    probs: float32 [G, S, E]; S must be a multiple of chunk.
    chunk: Q, window and buffer-chunk length.
    chunk_capacity: C_q, tokens each expert takes per chunk.

  Returns:
    (candidate bool [G, S, E], kept bool [G, S, E], slot int32 [G, S, E]
    in [0, (S/Q)·C_q) or DROPPED).
  """
  g, s, e = probs.shape
  if s % chunk:
    raise UserInputError(
        f'causal expert choice needs the group length ({s}) to be a multiple '
        f'of causal_chunk={chunk}; pick a causal_chunk that divides seq_len.')
  seen = jnp.minimum(jnp.arange(1, s + 1), chunk)[None, :, None]  # n_t
  allowed = (seen * chunk_capacity + chunk - 1) // chunk  # ceil(n·C_q/Q)
  candidate = window_rank(probs, chunk) < allowed
  per_chunk = candidate.reshape(g, s // chunk, chunk, e).astype(jnp.int32)
  position = jnp.cumsum(per_chunk, axis=2) - 1  # First come, first served.
  kept = (per_chunk > 0) & (position < chunk_capacity)
  offset = (jnp.arange(s // chunk, dtype=jnp.int32) * chunk_capacity)[
      None, :, None, None]
  slot = jnp.where(kept, position + offset, DROPPED).reshape(g, s, e)
  return candidate, kept.reshape(g, s, e), slot.astype(jnp.int32)


def expert_choice(logits: jax.Array, *, capacity: int,
                  key: jax.Array | None = None, causal: bool = True,
                  chunk: int = 16,
                  balance_fn: Callable | None = None) -> tuple[RoutingPlan, dict]:
  """Expert choice routing (Zhou et al. 2022).

  Args:
    logits: float [G, S, E].
    capacity: C, tokens per expert per group (non-causal), or C_q per chunk
      of `chunk` positions (causal).
    key: unused (deterministic).
    causal: True: the lookahead-free variant; False: the paper's top-C over
      the whole group.
    chunk: Q of the causal variant.
    balance_fn: unused; expert choice is balanced by construction, so its
      load_balance_loss is 0.

  Returns:
    (plan with K = E, aux). aux adds 'experts_per_token' [E+1], the share of
    tokens processed by 0, 1, ..., E experts.
  """
  del key, balance_fn
  if capacity is None:
    raise UserInputError(
        "router='expert_choice' needs expert buffers of a fixed size; use "
        "dispatcher='index' or 'einsum'.")
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)  # [G, S, E]
  g, s, e = probs.shape
  if causal:
    candidate, kept, slot = causal_choice(probs, chunk, capacity)
    plan_capacity = (s // chunk) * capacity
  else:
    kept, slot = group_choice(probs, capacity)
    candidate, plan_capacity = kept, capacity
  expert_index = jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32), (g, s, e))
  plan = RoutingPlan(
      expert_index=expert_index,
      combine_weights=jnp.where(kept, probs, 0.0),
      slot=slot, num_experts=e, capacity=plan_capacity)
  per_token = jnp.sum(kept, axis=-1).reshape(-1)  # experts per token
  aux = {
      'load_balance_loss': jnp.zeros((), jnp.float32),
      'z_loss': losses.z_loss(logits),
      **metrics_lib.routing_metrics(probs, expert_index, candidate, kept),
      'experts_per_token': jnp.mean(
          jax.nn.one_hot(per_token, e + 1), axis=0),
      # Expert e picked the token (causal: before its chunk buffer filled).
      ROUTED: candidate,
  }
  return plan, aux


def _route(inputs, config, *, train, capacity, key, balance_fn):
  del train
  return expert_choice(inputs.logits, capacity=capacity, key=key,
                       causal=config.causal_routing, chunk=config.causal_chunk,
                       balance_fn=balance_fn)


def _span(config, group_size: int) -> int:
  """Positions one expert buffer serves: a chunk when causal, else S."""
  if config.causal_routing:
    return min(group_size, config.causal_chunk)
  return group_size


def _capacity(config, group_size: int, cf: float) -> int:
  """Zhou et al.: C = S·c/E, one pick per expert, so not scaled by K; the
  causal variant's buffers are per chunk of Q positions."""
  span = _span(config, group_size)
  if config.fixed_capacity is not None:
    return min(config.fixed_capacity, span)
  return capacity_lib.expert_capacity(span, config.num_experts, 1, cf,
                                      config.min_capacity)


def _passes_per_token(config, group_size: int) -> float:
  """E·C slots filled per group (chunk, when causal) of S tokens: E·C/S."""
  return (config.num_experts * config.capacity(group_size, train=True) /
          _span(config, group_size))


def _check(config) -> None:
  if not DISPATCHERS[config.dispatcher].needs_capacity:
    raise UserInputError(
        f"router='expert_choice' fills fixed-size expert buffers; "
        f"dispatcher={config.dispatcher!r} has none: use 'index', 'fused' "
        "or 'einsum'.")


SPEC = registry.register(registry.RouterSpec(
    name='expert_choice', route=_route, group_wide=True, check=_check,
    capacity=_capacity, passes_per_token=_passes_per_token,
    balance_loss=False, ranked=False))
