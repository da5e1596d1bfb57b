"""GShard top-2 routing (Lepikhin et al. 2020), with its second-expert
policies."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import losses
from moe_jax.core.plan import RoutingPlan
from moe_jax.core.routing import registry
from moe_jax.core.routing.common import (build_plan, choose,
                                         without_null_choices)
from moe_jax.errors import UserInputError, check_choice

SECOND_POLICIES = ('all', 'random', 'sampling')


@dataclasses.dataclass(frozen=True)
class Options:
  """moe.router_options.gshard.

  Attributes:
    second_policy: the second expert in training: 'all', 'random' (route
      if 2·g2 > U) or 'sampling'.
    second_policy_eval: the same at eval; 'all' keeps eval deterministic.
  """

  second_policy: str = 'random'
  second_policy_eval: str = 'all'

  def __post_init__(self):
    for name in ('second_policy', 'second_policy_eval'):
      check_choice(f'router_options.gshard.{name}', getattr(self, name),
                   SECOND_POLICIES)


def gshard_top2(logits: jax.Array, *, capacity: int | None,
                key: jax.Array | None = None,
                second_policy: str = 'random',
                balance_fn: Callable = losses.load_balance_loss,
                replay: jax.Array | None = None,
                num_null: int = 0) -> tuple[RoutingPlan, dict]:
  """GShard top-2 routing (Lepikhin et al. 2020, Algorithm 1).

  Gates are renormalised over the pair: g_i / (g1 + g2). The second choice
  follows `second_policy`:
    'all': always routed;
    'random': routed only if 2·g2 > U(0, 1), so weak second choices rarely
      take capacity;
    'sampling': e2 is sampled ∝ p over the experts other than e1, and routed.
  num_null: the last N logits are null experts (AdaMoE): a null choice is
  not sent and the other gate is renormalised alone (to 1).
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
  top_p, top_e = choose(probs, 2, replay)
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
  if num_null:
    gates = without_null_choices(expert_index, gates,
                                 probs.shape[-1] - num_null, True)
  return build_plan(logits, probs, expert_index, gates, routed, capacity,
                    balance_fn, num_null=num_null)


def _route(inputs, config, *, train, capacity, key, balance_fn):
  options = config.router_options
  policy = options.second_policy if train else options.second_policy_eval
  return gshard_top2(inputs.logits, capacity=capacity, key=key,
                     second_policy=policy, balance_fn=balance_fn,
                     replay=inputs.replay, num_null=config.num_null_experts)


SPEC = registry.register(registry.RouterSpec(
    name='gshard', route=_route, options=Options, fixed_k=2, replayable=True,
    any_k_router='topk', eval_only=('second_policy_eval',),
    legacy_fields=(('second_policy', 'second_policy'),
                   ('second_policy_eval', 'second_policy_eval')),
    null_experts=True))
