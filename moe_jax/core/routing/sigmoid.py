"""Sigmoid gating with auxiliary-loss-free balancing (DeepSeek-V3, Liu et al.
2024, Sec. 2.1.2; Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing
Strategy for Mixture-of-Experts").

Affinities are s = sigmoid(logits), independent per expert. Experts are
selected on s + b, with a per-expert bias b that only steers selection; the
gates are the chosen s renormalised over the K chosen experts (DeepSeek-V3
Eq. 13-16), so b never scales an output and gets no gradient.

b is not a parameter. After each training step it moves by one of two
rules (`bias_update`), both from the step's whole (global) batch:
'sign': b_e += γ if expert e got fewer than the mean number of choices,
b_e -= γ if more (Wang et al. Alg. 1, b += γ·sign(mean − load));
'quantile': quantile balancing, b solved so that every expert would get
T·K/E of the batch's choices, optionally as an EMA (quantile_balance.py).
The optional complement is the sequence-wise balance loss (DeepSeek-V3
Eq. 17-20): the Switch loss on the normalised affinities s / Σ_e s, per
sequence; set balance_loss_scope='sequence' and a small load_balance_weight
(DeepSeek-V3: 1e-4).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import losses
from moe_jax.core.plan import RoutingPlan
from moe_jax.core.routing import quantile_balance, registry
from moe_jax.core.routing.common import build_plan, choose
from moe_jax.errors import UserInputError, check_choice

BIAS_UPDATES = ('sign', 'quantile')


@dataclasses.dataclass(frozen=True)
class Options:
  """moe.router_options.sigmoid.

  Attributes:
    bias_update_rate: γ of the 'sign' rule of aux-loss-free balancing
      (DeepSeek used 1e-3). > 0 gives each MoE layer a selection bias held
      in the training state and moved by ±γ after each step; 0: no bias.
    bias_update: 'sign' (the ±γ rule above) or 'quantile' (quantile
      balancing: the bias is solved from each step's batch, so γ stays 0;
      a bias is always present).
    quantile_weight: w of quantile balancing's EMA, b ← (1 − w)·b +
      w·solved; 1 (default): the solve itself. Only with 'quantile'.
  """

  bias_update_rate: float = 0.0
  bias_update: str = 'sign'
  quantile_weight: float = 1.0

  def __post_init__(self):
    value = self.bias_update_rate
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or
        not value >= 0):
      raise UserInputError(
          f'router_options.sigmoid.bias_update_rate={value!r} must be >= 0 '
          '(e.g. 1e-3; 0 turns loss-free balancing off).')
    check_bias_update(self, 'router_options.sigmoid.')

  @property
  def has_bias(self) -> bool:
    """Whether the layers carry a selection bias."""
    return has_bias(self)


def check_bias_update(options, name: str) -> None:
  """The checks of bias_update and quantile_weight against
  bias_update_rate, for every router whose Options hold the three (this
  one and deepseek.py); `name` is the options' prefix in messages."""
  value, w = options.bias_update_rate, options.quantile_weight
  check_choice(name + 'bias_update', options.bias_update, BIAS_UPDATES)
  if (not isinstance(w, (int, float)) or isinstance(w, bool) or
      not 0 < w <= 1):
    raise UserInputError(
        f'{name}quantile_weight={w!r} must be in (0, 1] '
        '(1: take each solve outright).')
  if options.bias_update == 'quantile' and value:
    raise UserInputError(
        f'{name}bias_update_rate={value!r} is the sign '
        "rule's step; bias_update='quantile' solves the bias instead: set "
        'it to 0.')
  if options.bias_update == 'sign' and w != 1:
    raise UserInputError(
        f'{name}quantile_weight={w!r} only acts with '
        "bias_update='quantile'; set that or leave the weight at 1.")


def has_bias(options) -> bool:
  """Whether the layers carry a selection bias: QB always, the sign rule
  with γ > 0."""
  return options.bias_update == 'quantile' or options.bias_update_rate > 0


def sigmoid_top_k(logits: jax.Array, *, capacity: int | None, k: int,
                  key: jax.Array | None = None, bias: jax.Array | None = None,
                  balance_fn: Callable = losses.load_balance_loss,
                  replay: jax.Array | None = None,
                  solve_quantile: bool = False) -> tuple[RoutingPlan, dict]:
  """Top-k on sigmoid affinities plus a selection-only bias.

  Args:
    logits: float [G, S, E].
    capacity: C, or None for dropless.
    k: K.
    key: unused (deterministic).
    bias: float [E] selection bias b, or None (b = 0).
    balance_fn: the load-balance loss, applied to s / Σ_e s.
    solve_quantile: also solve the quantile-balancing bias of this batch
      (needs bias and k < E).

  Returns:
    (plan, aux); aux adds 'expert_load' [E], the routed choices per expert
    over the whole batch (what the sign update reads), with a bias
    'router_bias' [E] (the bias this batch was routed with, for the logs),
    and with solve_quantile 'quantile_bias' [E] (what the quantile update
    reads).
  """
  del key
  logits = logits.astype(jnp.float32)
  scores = jax.nn.sigmoid(logits)  # [G, S, E]
  select = scores if bias is None else scores + jax.lax.stop_gradient(
      bias.astype(jnp.float32))
  _, expert_index = choose(select, k, replay)  # [G, S, K]
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
  if bias is not None:
    aux['router_bias'] = jax.lax.stop_gradient(bias.astype(jnp.float32))
    if solve_quantile:
      aux['quantile_bias'] = quantile_balance.solve_bias(scores, bias, k)
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


def _route(inputs, config, *, train, capacity, key, balance_fn):
  # The solve is for the update after a training step; eval skips its sort.
  solve = train and config.router_options.bias_update == 'quantile'
  return sigmoid_top_k(inputs.logits, capacity=capacity, k=config.top_k,
                       key=key, bias=inputs.params.get('router_bias'),
                       balance_fn=balance_fn, replay=inputs.replay,
                       solve_quantile=solve)


def check_quantile_top_k(config, router: str) -> None:
  """QB solves for the (K+1)-th best expert of each token: K < E."""
  if (config.router_options.bias_update == 'quantile' and
      config.top_k >= config.num_experts):
    raise UserInputError(
        f"router_options.{router}.bias_update='quantile' needs top_k < "
        f'num_experts (top_k={config.top_k}, num_experts='
        f'{config.num_experts}): with every expert chosen there is nothing '
        'to balance; use the sign rule or more experts.')


def _check(config):
  check_quantile_top_k(config, 'sigmoid')


# The selection bias b [E]: state, not a parameter (no gradient, no weight
# decay, no Adam moments), starting at 0.
ROUTER_BIAS = registry.ExtraParam(
    'router_bias', lambda config, d: (config.num_experts,),
    jax.nn.initializers.zeros, (None,), trainable=False)


def update_state(state, aux, options):
  """The selection bias after a step, by options.bias_update (sign or
  quantile); shared with deepseek.py."""
  bias = state['router_bias']
  if options.bias_update == 'quantile':
    return {'router_bias': quantile_balance.update_bias(
        bias, aux['quantile_bias'], options.quantile_weight)}
  return {'router_bias': update_bias(bias, aux['expert_load'],
                                     options.bias_update_rate)}


def batch_pooled(router: str) -> Callable:
  """RouterSpec.batch_pooled of a router with these bias options."""
  def words(config) -> str | None:
    if config.router_options.bias_update == 'quantile':
      return (f"router_options.{router}.bias_update='quantile' solves the "
              'bias from every score of the batch at once; use the sign rule')
    return None
  return words


SPEC = registry.register(registry.RouterSpec(
    name='sigmoid', route=_route, options=Options, check=_check,
    replayable=True,
    extra_params=lambda config: (
        (ROUTER_BIAS,) if config.router_options.has_bias else ()),
    update_state=update_state, totals=('expert_load',),
    batch_pooled=batch_pooled('sigmoid'),
    legacy_fields=(('bias_update_rate', 'bias_update_rate'),)))
