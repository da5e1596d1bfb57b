"""MoEConfig's longer checks, one function each (config.py calls them from
__post_init__): the router's options, null experts, the bounded
expert-parallel buffer and the later shared fields. Each raises a one-line
UserInputError naming the field and the fix.
"""

from __future__ import annotations

import dataclasses

from moe_jax.core import losses
from moe_jax.core import routing
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.errors import UserInputError, check_bool, check_choice, check_positive

# What a bounded expert-parallel exchange does with the rows it cannot hold.
EP_OVERFLOW = ('retry', 'drop')


def resolve_router_options(config, spec: routing.RouterSpec):
  """The chosen router's Options from what router_options holds."""
  given = config.router_options
  if given is None:
    return spec.options()
  if isinstance(given, spec.options):
    return given
  if not hasattr(given, 'items'):
    raise UserInputError(
        f'router_options={given!r} is not the options of '
        f'router={config.router!r}; pass its Options, a mapping '
        f'{{{config.router!r}: {{...}}}}, or None.')
  chosen = spec.options()
  for name, fields in given.items():
    other = routing.get(name) if name in routing.names() else None
    if other is None:
      raise UserInputError(
          f'router_options.{name} names no registered router; registered: '
          f'{", ".join(routing.names())}.')
    fields = dict(fields.items())
    try:
      options = other.options(**fields)
    except TypeError:
      known = [f.name for f in dataclasses.fields(other.options)]
      unknown = sorted(set(fields) - set(known))
      raise UserInputError(
          f'router_options.{name} has no field {unknown[0]!r}; its fields: '
          f'{", ".join(known) or "none"}.') from None
    if name == config.router:
      chosen = options
      continue
    default = other.options()
    for field in dataclasses.fields(options):
      value = getattr(options, field.name)
      if value != getattr(default, field.name):
        raise UserInputError(
            f'router_options.{name}.{field.name}={value!r} needs '
            f'router={name!r} (router is {config.router!r}); set it to '
            f'{getattr(default, field.name)!r}.')
  return chosen


def check_null_experts(config, spec: routing.RouterSpec) -> None:
  n = config.num_null_experts
  if not isinstance(n, int) or isinstance(n, bool) or n < 0:
    raise UserInputError(
        f'num_null_experts={n!r} must be an int >= 0 (0: no null experts).')
  if n and not spec.null_experts:
    able = [name for name in routing.names()
            if routing.get(name).null_experts]
    raise UserInputError(
        f'num_null_experts={n} needs a router that can route to null '
        f'experts, but router={config.router!r} cannot use them; use one of '
        f'{", ".join(map(repr, able))} or set num_null_experts=0.')


def check_ep_buffer(config) -> None:
  check_choice('ep_overflow', config.ep_overflow, EP_OVERFLOW)
  factor = config.ep_buffer_factor
  if factor is None or factor == 0:
    return
  check_positive('ep_buffer_factor', factor, (int, float),
                 'e.g. 2.0 (buffers twice the balanced load), or 0 for the '
                 'worst-case buffers')
  if DISPATCHERS[config.dispatcher].needs_capacity:
    raise UserInputError(
        f'ep_buffer_factor={factor} bounds the dropless dispatchers\' '
        f'exchange, but dispatcher={config.dispatcher!r} has capacity '
        "buffers; use a dropless dispatcher or set ep_buffer_factor=0.")


def check_shared_fields(config, spec: routing.RouterSpec) -> None:
  """Checks of the later shared fields (all off by default)."""
  if config.fixed_capacity is not None:
    check_positive('fixed_capacity', config.fixed_capacity)
  check_positive('causal_chunk', config.causal_chunk)
  check_choice('balance_loss_scope', config.balance_loss_scope,
               losses.BALANCE_SCOPES)
  if (not isinstance(config.num_shared_experts, int) or
      config.num_shared_experts < 0):
    raise UserInputError(
        f'num_shared_experts={config.num_shared_experts!r} must be an int >= 0.')
  for name in ('shared_expert_gate', 'causal_routing', 'allow_noncausal',
               'use_bias'):
    check_bool(name, getattr(config, name))
  if config.shared_expert_gate and not config.num_shared_experts:
    raise UserInputError(
        'shared_expert_gate=True gates the shared experts, but '
        'num_shared_experts=0; set num_shared_experts >= 1 or the gate off.')
  if spec.group_wide and config.causal_routing and config.group_size is not None:
    raise UserInputError(
        f'causal {config.router} routes each sequence as its own group; '
        f'unset group_size (now {config.group_size}) or set '
        'causal_routing=False.')
  if config.use_bias and not spec.discrete:
    # bo is added per chosen expert after the combine (core/moe.py), which
    # needs a plan of (expert, weight) choices.
    raise UserInputError(
        f'use_bias=True needs a router that picks experts per token, but '
        f'router={config.router!r} mixes tokens instead; use a token-choice '
        'router (e.g. topk) or set use_bias=False.')
