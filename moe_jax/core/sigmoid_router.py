"""Sigmoid gating with auxiliary-loss-free balancing (DeepSeek-V3, Liu et al.
2024, Sec. 2.1.2; Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing
Strategy for Mixture-of-Experts").

Affinities are s = sigmoid(logits), independent per expert. Experts are
selected on s + b, with a per-expert bias b that only steers selection; the
gates are the chosen s renormalised over the K chosen experts (DeepSeek-V3
Eq. 13-16), so b never scales an output and gets no gradient.

b is not a parameter. After each training step, from that step's load over
the whole batch: b_e += γ if expert e got fewer than the mean number of
choices, b_e -= γ if more (Wang et al. Alg. 1, b += γ·sign(mean − load)).
The optional complement is the sequence-wise balance loss (DeepSeek-V3
Eq. 17-20): the Switch loss on the normalised affinities s / Σ_e s, per
sequence; set balance_loss_scope='sequence' and a small load_balance_weight
(DeepSeek-V3: 1e-4).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import losses
from moe_jax.core.plan import RoutingPlan
from moe_jax.core.routers import build_plan, top_k_experts


def sigmoid_top_k(logits: jax.Array, *, capacity: int | None, k: int,
                  key: jax.Array | None = None, bias: jax.Array | None = None,
                  balance_fn: Callable = losses.load_balance_loss
                  ) -> tuple[RoutingPlan, dict]:
  """Top-k on sigmoid affinities plus a selection-only bias.

  Args:
    logits: float [G, S, E].
    capacity: C, or None for dropless.
    k: K.
    key: unused (deterministic).
    bias: float [E] selection bias b, or None (b = 0).
    balance_fn: the load-balance loss, applied to s / Σ_e s.

  Returns:
    (plan, aux); aux adds 'expert_load' [E], the routed choices per expert
    over the whole batch (what the bias update reads).
  """
  del key
  logits = logits.astype(jnp.float32)
  scores = jax.nn.sigmoid(logits)  # [G, S, E]
  select = scores if bias is None else scores + jax.lax.stop_gradient(
      bias.astype(jnp.float32))
  _, expert_index = top_k_experts(select, k)  # [G, S, K]
  chosen = jnp.take_along_axis(scores, expert_index, axis=-1)
  gates = chosen / jnp.sum(chosen, axis=-1, keepdims=True)
  # Normalised affinities: the distribution the balance loss and the
  # entropy/top-gate metrics read.
  probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
  routed = jnp.ones(gates.shape, bool)
  plan, aux = build_plan(logits, probs, expert_index, gates, routed, capacity,
                         balance_fn)
  aux['expert_load'] = jnp.sum(
      jax.nn.one_hot(expert_index, scores.shape[-1]), axis=(0, 1, 2))
  return plan, aux


def update_bias(bias: jax.Array, load: jax.Array, rate: float) -> jax.Array:
  """b + γ·sign(mean(load) − load): raise under-loaded experts' bias, lower
  over-loaded ones' (Wang et al. 2024, Alg. 1).

  Args:
    bias: float32 [E].
    load: float [E] choices per expert in the step's whole batch.
    rate: γ (1e-3 in DeepSeek-V3).
  """
  load = jax.lax.stop_gradient(load.astype(jnp.float32))
  return bias + rate * jnp.sign(jnp.mean(load) - load)
