"""Mixtral-style top-k routing (Jiang et al. 2024), and the unrenormalised
gates of DeepSeekMoE, Qwen1.5-MoE and OLMoE."""

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
from moe_jax.errors import check_bool


@dataclasses.dataclass(frozen=True)
class Options:
  """moe.router_options.topk.

  Attributes:
    renormalize: True: gates are the softmax over the k chosen logits
      (Mixtral); False: the full softmax's probabilities of the chosen k
      (DeepSeekMoE, Qwen1.5-MoE, OLMoE; Hugging Face's norm_topk_prob).
  """

  renormalize: bool = True

  def __post_init__(self):
    check_bool('router_options.topk.renormalize', self.renormalize)


def top_k(logits: jax.Array, *, capacity: int | None, k: int,
          key: jax.Array | None = None,
          balance_fn: Callable = losses.load_balance_loss,
          renormalize: bool = True,
          replay: jax.Array | None = None,
          num_null: int = 0) -> tuple[RoutingPlan, dict]:
  """Mixtral-style top-k: softmax over the k largest logits (Jiang et al. 2024).

  Equal to the full softmax renormalised over the top k. With k=1 the gate is
  always 1 and the router learns only from the auxiliary losses; use
  `switch_top1` for a router that the task gradient reaches.

  renormalize=False keeps the full-softmax probabilities of the chosen k as
  gates, so they sum to less than 1 (DeepSeekMoE, Qwen1.5-MoE and OLMoE;
  Hugging Face's `norm_topk_prob=False`).

  num_null: the last N logits are null experts (AdaMoE): the softmax and the
  top k span all E + N, a null choice is not sent, and with renormalize the
  gates are renormalised over the real choices only (AdaMoE).
  """
  del key
  logits = logits.astype(jnp.float32)
  top_logits, expert_index = choose(logits, k, replay)
  probs = jax.nn.softmax(logits, axis=-1)
  if renormalize:
    gates = jax.nn.softmax(top_logits, axis=-1)
  else:
    gates = jnp.take_along_axis(probs, expert_index, axis=-1)
  if num_null:
    gates = without_null_choices(expert_index, gates,
                                 logits.shape[-1] - num_null, renormalize)
  routed = jnp.ones(gates.shape, bool)
  return build_plan(logits, probs, expert_index, gates, routed, capacity,
                    balance_fn, num_null=num_null)


def _route(inputs, config, *, train, capacity, key, balance_fn):
  del train
  return top_k(inputs.logits, capacity=capacity, k=config.top_k, key=key,
               balance_fn=balance_fn,
               renormalize=config.router_options.renormalize,
               replay=inputs.replay, num_null=config.num_null_experts)


SPEC = registry.register(registry.RouterSpec(
    name='topk', route=_route, options=Options, replayable=True,
    legacy_fields=(('renormalize_top_k', 'renormalize'),),
    null_experts=True))
