"""One MoE layer's routing decision per token, as a routing trace stores it.

What a RoutingPlan says and what a trace needs differ in two ways:

- A plan marks a choice it did not send with slot DROPPED, whether capacity
  dropped it or the router never meant to send it: ReLU routing's and expert
  choice's K = E columns hold every expert, chosen or not, and a null-expert
  choice (AdaMoE, MoE++) is never sent. The router's `routed` mask (core/
  plan.py, ROUTED) tells them apart, so a trace's `dropped` is over capacity
  only, and loads count only the routed (token, expert) pairs.
- For those K = E routers a plan's column e is expert e, not a rank. The
  trace orders each token's columns by router probability, the routed ones
  first, so its K axis reads as a rank for every router (column 0 the
  token's strongest expert) and the rank-based analyses (first-choice
  heatmaps, reuse, transitions) mean the same thing for all of them.

Shape letters: G groups, S tokens per group, K choices, E real experts,
N null experts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core.plan import RoutingPlan


def layer_choices(plan: RoutingPlan, logits: jax.Array, routed: jax.Array, *,
                  ranked: bool = True) -> dict[str, jax.Array]:
  """The trace's per-token arrays of one MoE layer.

  Args:
    plan: the layer's RoutingPlan, [G, S, K] arrays.
    logits: float [G, S, E + N] router logits.
    routed: bool [G, S, K] choices the router meant to send to a real
      expert (aux['routing']['routed'] from moe_apply).
    ranked: the router's RouterSpec.ranked: False reorders each token's
      columns (see the module docstring).

  Returns:
    'expert' int32, 'gate', 'prob' (softmax of the logits at the chosen
    expert), 'routed' and 'dropped' (routed but not kept) bool, all
    [G, S, K]; 'probs' float32 [G, S, E + N].
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  expert = plan.expert_index
  prob = jnp.take_along_axis(probs, expert, axis=-1)
  out = {'expert': expert, 'gate': plan.combine_weights, 'prob': prob,
         'routed': routed, 'dropped': routed & ~plan.kept}
  if not ranked:
    # Routed columns get keys in [-1, 0], the others [1, 2]: routed first,
    # each part by falling probability; a stable sort keeps expert order
    # among ties.
    key = jnp.where(routed, -prob, 2.0 - prob)
    order = jnp.argsort(key, axis=-1, stable=True)
    out = {k: jnp.take_along_axis(v, order, axis=-1) for k, v in out.items()}
  out['probs'] = probs
  return out
