"""Switch top-1 routing (Fedus et al. 2021): the raw gate of the argmax."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import losses
from moe_jax.core.plan import RoutingPlan
from moe_jax.core.routing import registry
from moe_jax.core.routing.common import build_plan


def switch_top1(logits: jax.Array, *, capacity: int | None,
                key: jax.Array | None = None,
                balance_fn: Callable = losses.load_balance_loss,
                replay: jax.Array | None = None,
                num_null: int = 0) -> tuple[RoutingPlan, dict]:
  """Switch Transformer top-1 routing (Fedus et al. 2021).

  The gate is the raw softmax probability of the chosen expert, not
  renormalised: renormalising one choice makes the gate exactly 1 and cuts
  the router off from the task gradient. With num_null, the last N logits
  are null experts: a token whose argmax is one gets no expert.
  """
  del key  # Deterministic given the logits.
  logits = logits.astype(jnp.float32)
  probs = jax.nn.softmax(logits, axis=-1)
  if replay is None:
    expert_index = jnp.argmax(probs, axis=-1)[..., None]  # [G, S, 1]
  else:  # Router replay (common.choose): the recorded choice.
    expert_index = replay.astype(jnp.int32)
  gates = jnp.take_along_axis(probs, expert_index, axis=-1)
  routed = jnp.ones(gates.shape, bool)
  return build_plan(logits, probs, expert_index, gates, routed, capacity,
                    balance_fn, num_null=num_null)


def _route(inputs, config, *, train, capacity, key, balance_fn):
  del train
  return switch_top1(inputs.logits, capacity=capacity, key=key,
                     balance_fn=balance_fn, replay=inputs.replay,
                     num_null=config.num_null_experts)


SPEC = registry.register(registry.RouterSpec(
    name='switch', route=_route, fixed_k=1, any_k_router='topk',
    replayable=True, null_experts=True))
