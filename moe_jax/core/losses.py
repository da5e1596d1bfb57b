"""Auxiliary router losses. Unweighted: the caller multiplies by α or c_z."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def load_balance_loss(probs: jax.Array, expert_index: jax.Array) -> jax.Array:
  """Switch Transformer load-balancing loss, E · Σ_e f_e · P_e.

  Fedus et al. 2021, Eq. 4. f_e is the fraction of the T·K router choices
  that picked expert e (before capacity, so dropped tokens still count as
  demand), P_e the mean router probability of e. Dividing the choice count by
  K keeps the value at 1 under uniform routing for any K; it is E when every
  token puts all its probability on one expert, and also picks that expert.

  Args:
    probs: float [..., E] router probabilities (softmax over experts).
    expert_index: int [..., K] chosen experts, same leading shape.

  Returns:
    Scalar float32.
  """
  num_experts = probs.shape[-1]
  probs = probs.reshape(-1, num_experts).astype(jnp.float32)
  choices = jax.nn.one_hot(expert_index.reshape(-1), num_experts,
                           dtype=jnp.float32)
  fraction = jnp.mean(choices, axis=0)  # f_e, sums to 1.
  mean_prob = jnp.mean(probs, axis=0)  # P_e, sums to 1.
  return num_experts * jnp.sum(fraction * mean_prob)


def z_loss(logits: jax.Array) -> jax.Array:
  """Router z-loss, mean over tokens of logsumexp(logits)².

  Zoph et al. 2022 (ST-MoE), Eq. 5. Penalises large logits, which keeps the
  float32 softmax well conditioned.

  Args:
    logits: float [..., E] router logits.

  Returns:
    Scalar float32.
  """
  lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.square(lse))
