"""An adaptive load-balance weight, moved by how much capacity overflows.

axlearn's `AdaptiveLoadBalanceLoss` (apple/axlearn,
axlearn/common/mixture_of_experts.py, with `MovingAverage` from
axlearn/common/layers.py): each MoE layer keeps a log-scale ℓ (starting at
0) and a moving average v̄ of its over-capacity ratio r, the share of
choices that found their expert full (the maximum over the K choice ranks).
At each training step, with c the number of steps averaged so far:

    w  = max(min_weight, 1 / (c + 1))       # a plain mean at first, an
    v̄ ← (1 − w)·v̄ + w·r,   c ← c + 1        # EMA once 1/(c+1) < min_weight
    ℓ ← ℓ + ε   if v̄ > max_over_capacity
    ℓ ← ℓ − ε   if v̄ < min_over_capacity    (unchanged in between)

and that step's balance loss is weighted α·exp(ℓ), ℓ already moved (axlearn
applies the new scale in the same forward pass; the routing, and so r, does
not depend on it). axlearn's defaults: ε (log_step) = 0.01, min_value =
1e-3; max_value and min_weight have none (its test uses a band 0.4..0.6
and min_weight 0.2), so the defaults below for them are this project's.
There is no clip on ℓ, as in axlearn.

r here is the routing metric 'dropped_fraction' [K] (dropped choices of
rank k over tokens), which is axlearn's ratio (over the rank's routed
choices) whenever every choice is routed; with GShard's random second
policy the second rank's denominator counts the skipped choices too.

The state is three float32 scalars per layer, outside the optimizer and
checkpointed with the router state (the count is exact up to 2^24 steps).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from moe_jax.core.routing.registry import ExtraParam
from moe_jax.errors import UserInputError

_PREFIX = 'adaptive_balance'


def _number(name: str, value, ok, must: str) -> None:
  if (not isinstance(value, (int, float)) or isinstance(value, bool) or
      not math.isfinite(value) or not ok(value)):
    raise UserInputError(f'{_PREFIX}.{name}={value!r} must {must}.')


@dataclasses.dataclass(frozen=True)
class AdaptiveBalance:
  """moe.adaptive_balance: axlearn's adaptive balance-loss weight.

  Attributes:
    log_step: ε, the step of the weight in log space per training step
      (axlearn: 0.01); 0 (default): off, the weight is load_balance_weight.
    max_over_capacity: raise the weight while the averaged over-capacity
      ratio is above this (axlearn's max_value; ours: 1% of choices).
    min_over_capacity: lower it while the average is below this (axlearn's
      min_value and default, 1e-3).
    average_min_weight: the moving average's smallest weight on a new
      value, 1/(its horizon in steps) once warmed up (axlearn's
      MovingAverage.min_weight; ours: 0.01, about 100 steps).
  """

  log_step: float = 0.0
  max_over_capacity: float = 0.01
  min_over_capacity: float = 1e-3
  average_min_weight: float = 0.01

  def __post_init__(self):
    _number('log_step', self.log_step, lambda v: v >= 0,
            'be >= 0 (e.g. 0.01; 0 keeps the weight fixed)')
    _number('min_over_capacity', self.min_over_capacity,
            lambda v: 0 <= v <= 1, 'be in [0, 1] (a share of choices)')
    _number('max_over_capacity', self.max_over_capacity,
            lambda v: self.min_over_capacity <= v <= 1,
            f'be in [min_over_capacity={self.min_over_capacity!r}, 1]')
    _number('average_min_weight', self.average_min_weight,
            lambda v: 0 < v <= 1, 'be in (0, 1] (e.g. 0.01)')

  @property
  def on(self) -> bool:
    return self.log_step > 0


def resolve(given: Any) -> AdaptiveBalance:
  """AdaptiveBalance from None, itself, or a mapping (a ConfigDict)."""
  if given is None:
    return AdaptiveBalance()
  if isinstance(given, AdaptiveBalance):
    return given
  if not hasattr(given, 'items'):
    raise UserInputError(f'{_PREFIX}={given!r} must be a mapping of its '
                         'fields or None.')
  fields = dict(given.items())
  known = [f.name for f in dataclasses.fields(AdaptiveBalance)]
  unknown = sorted(set(fields) - set(known))
  if unknown:
    raise UserInputError(f'{_PREFIX} has no field {unknown[0]!r}; its '
                         f'fields: {", ".join(known)}.')
  return AdaptiveBalance(**fields)


def check(config) -> None:
  """One-line refusals where an adaptive weight has nothing to act on."""
  if not config.adaptive_balance.on:
    return
  spec = config.spec
  if not spec.balance_loss:
    raise UserInputError(
        f'{_PREFIX}.log_step > 0 adapts the balance-loss weight, but '
        f'router={config.router!r} has no balance loss that steers it; set '
        'log_step to 0 or use a top-k router.')
  if config.capacity(1, True) is None:
    raise UserInputError(
        f'{_PREFIX}.log_step > 0 reads the over-capacity ratio, which is 0 '
        f'with dispatcher={config.dispatcher!r} (nothing is dropped); set '
        'log_step to 0 or use a capacity dispatcher.')
  if not config.load_balance_weight > 0:
    raise UserInputError(
        f'{_PREFIX}.log_step > 0 scales load_balance_weight, which is 0; '
        'set load_balance_weight > 0 (e.g. 1e-2) or log_step to 0.')


# Per-layer state (names kept stable: checkpoints store them).
STATE = ('balance_log_scale', 'over_capacity_average', 'over_capacity_count')


def extra_params(options: AdaptiveBalance) -> tuple[ExtraParam, ...]:
  """The layer's adaptive-weight state: float32 scalars starting at 0."""
  if not options.on:
    return ()
  return tuple(ExtraParam(name, lambda config, d: (),
                          jax.nn.initializers.zeros, (), trainable=False)
               for name in STATE)


def step(state: dict[str, jax.Array], over_capacity: jax.Array,
         options: AdaptiveBalance) -> dict[str, jax.Array]:
  """One training step of the rule in the module docstring.

  Args:
    state: the STATE scalars.
    over_capacity: r, this step's over-capacity ratio (a scalar).
    options: the layer's AdaptiveBalance.

  Returns:
    The new STATE scalars (float32, no gradient).
  """
  log_scale, average, count = jax.lax.stop_gradient(
      [state[name].astype(jnp.float32) for name in STATE])
  r = jax.lax.stop_gradient(over_capacity.astype(jnp.float32))
  w = jnp.maximum(options.average_min_weight, 1.0 / (count + 1.0))
  average = (1.0 - w) * average + w * r
  move = ((average > options.max_over_capacity).astype(jnp.float32) -
          (average < options.min_over_capacity).astype(jnp.float32))
  return {'balance_log_scale': log_scale + options.log_step * move,
          'over_capacity_average': average,
          'over_capacity_count': count + 1.0}


def layer_scale(params: dict[str, jax.Array], aux: dict[str, jax.Array],
                options: AdaptiveBalance, *, train: bool
                ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(exp(ℓ) for this step's balance loss, the state after the step).

  Training moves the state from aux['dropped_fraction'] first (as axlearn);
  evaluation reads it unchanged.
  """
  state = {name: params[name] for name in STATE}
  if train:
    state = step(state, jnp.max(aux['dropped_fraction']), options)
  state = jax.lax.stop_gradient(state)
  return jnp.exp(state['balance_log_scale']), state
