"""Quantile balancing (QB): solve the selection bias once per global batch.

The successor of the ±γ sign update of loss-free balancing (Wang et al.
2024): instead of nudging each expert's bias by a fixed step, solve for the
biases that would give every expert exactly T·K/E of the batch's T·K
choices. Origin: J. Su, "MoE Travelogue 6: optimal assignment for load
balancing", kexue.fm/archives/11619; merged as
`moe_router_load_balancing_type='quantile_balancing'` in Megatron-LM
(PRs #5349, #6637, `qb_dual_update`) and in torchtitan (PR #4577). This is
not a router: the selection-bias routers (sigmoid.py) call it.

Derivation. Token t has selection scores s_te (for the sigmoid router the
affinities, where its bias is added) and takes the top K of s_te + b_e. The
balanced assignment is the linear program

    max_x Σ_te x_te·s_te   s.t.  Σ_e x_te = K (each token),
                                  Σ_t x_te = n = T·K/E (each expert),
                                  0 <= x_te <= 1.

With multipliers α_t for the token rows and β_e for the expert columns,
x_te = 1 exactly where s_te − α_t − β_e > 0. One step of dual coordinate
descent from the current bias b (= −β):

  1. rows, β fixed: a token takes its K best s_te + b_e, so any α_t between
     its K-th and (K+1)-th best adjusted score is optimal; take the
     (K+1)-th, the best expert it does not take.
  2. columns, α fixed: expert e takes token t iff its margin
     m_te = s_te − α_t exceeds β_e. For exactly n takers, β_e is the
     (n+1)-th largest margin of column e, i.e. the (1 − K/E) quantile of
     m_{·e} over the batch's tokens, and the solved bias is b_e = −β_e.

So with K = 1 and b = 0, m_te = s_te − (best score of t) <= 0, and the
solved bias lifts expert e just enough that its n strongest "near-misses"
win. One step is not the LP's optimum (α moves once β does), but repeated
over steps it converges, and from any start one solve lands near balance
(tests/test_core_quantile_balance.py measures both against the sign rule).

Following Megatron-LM, the new bias is an EMA of the solves,
b ← (1 − w)·b + w·solved (w = 1: the solve itself), then centred: adding
one constant to every expert's bias changes no top-K, and the solve is
equivariant to such shifts (α moves with b), so centring only keeps b from
drifting. Megatron solves on router logits because its bias is subtracted
there; here the solve runs in whatever space the router adds its bias (the
rule only needs the two to agree).

n = floor(T·K/E), as Megatron's `m * k // n`. Under a mesh the router runs
on global arrays, so the sort below is over the whole global batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core.routing.common import top_k_experts


def solve_bias(scores: jax.Array, bias: jax.Array, k: int,
               eligible: jax.Array | None = None) -> jax.Array:
  """The bias that would give each expert T·K/E tokens of this batch.

  Args:
    scores: float [G, S, E] selection scores (without the bias).
    bias: float [E] the bias the batch was routed with.
    k: K, < E.
    eligible: optional bool [G, S, E], the experts each token may take
      (DeepSeek's group limit, deepseek.py: the experts of its kept
      groups). The LP then fixes x_te = 0 elsewhere: α_t is the (K+1)-th
      best among the token's eligible experts (its best not taken; the
      (K+1)-th of all where it has only K), and an ineligible token counts
      for no expert, its margin put below every other. One step is then the
      coordinate step of the LP under the current group choice; the group
      choice moves with the bias, and over steps the loads converge
      (tests/test_core_deepseek_quantile.py).

  Returns:
    float32 [E], no gradient: b_e = −((n+1)-th largest over tokens of
    s_te − α_t), α_t the (K+1)-th largest s_te + b_e, n = floor(T·K/E).
  """
  scores, bias = jax.lax.stop_gradient(
      (scores.astype(jnp.float32), bias.astype(jnp.float32)))
  num_experts = scores.shape[-1]
  flat = scores.reshape(-1, num_experts)  # [T, E]
  tokens = flat.shape[0]
  adjusted, _ = top_k_experts(flat + bias, k + 1)
  alpha = adjusted[:, k:]  # [T, 1] best expert not taken.
  if eligible is not None:
    eligible = eligible.reshape(-1, num_experts)
    within, _ = top_k_experts(jnp.where(eligible, flat + bias, -jnp.inf),
                              k + 1)
    alpha = jnp.where(jnp.isfinite(within[:, k:]), within[:, k:], alpha)
  margins = flat - alpha
  if eligible is not None:
    margins = jnp.where(eligible, margins, jnp.min(margins))
  margins = jnp.sort(margins, axis=0)  # [T, E] ascending per expert.
  n = min(tokens * k // num_experts, tokens - 1)
  return -margins[tokens - 1 - n]


def update_bias(bias: jax.Array, solved: jax.Array,
                weight: float) -> jax.Array:
  """b ← (1 − w)·b + w·solved, centred (mean 0): Megatron-LM's EMA step.

  Args:
    bias: float32 [E] the current bias.
    solved: float32 [E] solve_bias on this step's batch.
    weight: w in (0, 1]; 1 takes the solve outright.
  """
  new = (1.0 - weight) * bias + weight * jax.lax.stop_gradient(solved)
  return new - jnp.mean(new)
