"""Expert parallelism: dispatch locally, all-to-all to the experts, and back.

With a mesh in context (`jax.set_mesh`), each device holds the tokens of its
groups (G split over data × expert) and E / EP experts (EP = size of the
'expert' axis). Per device:

  dispatch    [G_l, S, D]        -> [E, G_l·C, D]       (local, no comms)
  all_to_all  [E, G_l·C, D]      -> [E/EP, EP·G_l·C, D] (rows to the device
                                                          holding each expert)
  experts     local weights [E/EP, D, F] (F split over 'model', psum after)
  all_to_all  back               -> [E, G_l·C, D]
  combine     [E, G_l·C, D]      -> [G_l, S, D]         (local)

The dropless dispatchers have no [E, C] buffers; they exchange just the
routed choices, counts first (dropless_ep.py).

This layer sits above the pure core: parallel_moe_apply is the core's
moe_apply with run_experts below as its exchange (MoELayer and
moe_jax.parallel_moe_apply use it); the core never imports this module.

The collectives are explicit (shard_map + jax.lax.all_to_all): in our trial
a dispatch written only with sharding constraints compiled to all-gathers of
the tokens on CPU, not all-to-alls. The router runs outside, on global
arrays, so its losses and metrics are exactly the single-device ones.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from moe_jax.core import moe as core_moe
from moe_jax.core.dispatch import Dispatcher, run_local
from moe_jax.core.experts import PARAM_AXES
from moe_jax.core.plan import RoutingPlan
from moe_jax.parallel import dropless_ep, fsdp
from moe_jax.parallel import rules as rules_lib

EXPERT_AXIS = 'expert'
MODEL_AXIS = 'model'
# aux name of the rows a bounded dropless exchange could not hold.
OVERFLOW = 'ep_overflow_rows'


def _mesh_sizes() -> dict[str, int]:
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or not mesh.axis_names:
    return {}
  return dict(zip(mesh.axis_names, mesh.axis_sizes))


def run_experts(x: jax.Array, plan: RoutingPlan, params: dict[str, jax.Array],
                dispatcher: Dispatcher, expert_fn: Callable, *,
                exchange_impl: str | None = None,
                buffer_factor: float | None = None,
                metrics: dict[str, jax.Array] | None = None) -> jax.Array:
  """dispatch -> experts -> combine, expert-parallel when a mesh is set.

  Capacity dispatchers exchange their fixed [E, G_l·C, D] buffers with
  all-to-all (below); dropless ones exchange only the routed choices
  (dropless_ep.py).

  Args:
    x: [G, S, D] grouped tokens.
    plan: the routing plan of x: a RoutingPlan, or a router's own plan
      type (any pytree whose arrays lead with G) with the dispatcher that
      moves it.
    params: expert weights, each [E, ...] with the expert axis first.
    dispatcher: how tokens move to per-expert buffers and back.
    expert_fn: (params, ExpertInputs) -> outputs in the same layout.
    exchange_impl: dropless only: 'ragged' or 'dense' (ragged_exchange.py);
      None picks by backend.
    buffer_factor: dropless only: the exchange's slots as a multiple of
      the balanced load (dropless_ep.slot_rows); None: the worst case.
    metrics: a dict that receives OVERFLOW, the choices of all devices
      that did not fit the bounded slots (int32 scalar), when the dropless
      exchange runs with a buffer_factor. A dict, because the core's
      RunExperts contract returns only the outputs.

  Returns:
    [G, S, D] combined expert outputs.
  """
  sizes = _mesh_sizes()
  if all(s == 1 for s in sizes.values()):
    return run_local(x, plan, params, dispatcher, expert_fn)

  ep = sizes.get(EXPERT_AXIS, 1)
  tp = sizes.get(MODEL_AXIS, 1)
  if ep > 1 and dispatcher.buffered is not None:
    # Rows cross devices as buffers: use the twin that materialises them.
    dispatcher = dispatcher.buffered
  mesh = jax.sharding.get_abstract_mesh()
  # Tokens [G, S, D] and every plan array [G, ...] split alike over the
  # groups. A plan is any pytree of such arrays (a RoutingPlan, or a
  # router's own plan type such as Soft MoE's), rebuilt inside.
  groups = rules_lib.logical_to_spec(('batch', None, None), mesh=mesh)
  plan_leaves, plan_tree = jax.tree.flatten(plan)
  plan_specs = [rules_lib.logical_to_spec(('batch',) + (None,) * (a.ndim - 1),
                                          mesh=mesh) for a in plan_leaves]
  # The weights enter as they are stored: under FSDP_RULES with D split
  # over 'data', gathered below (rules_lib.active() says which rules).
  weights = {name: rules_lib.logical_to_spec(PARAM_AXES[name],
                                             rules_lib.active(), mesh)
             for name in params}
  dropless_ep_on = ep > 1 and not dispatcher.needs_capacity
  counted = dropless_ep_on and bool(buffer_factor)

  def local(x, plan_leaves, params):
    local_plan = jax.tree.unflatten(plan_tree, plan_leaves)
    params = {name: fsdp.gather_data(w, weights[name])
              for name, w in params.items()}
    if dropless_ep_on:
      y, overflow = dropless_ep.dropless_experts(
          x, local_plan, params, dispatcher, expert_fn, EXPERT_AXIS,
          exchange_impl, buffer_factor)
      # Everything after the experts is linear, so the partial products
      # over F are summed once, on the smallest array.
      y = jax.lax.psum(y, MODEL_AXIS) if tp > 1 else y
      # The groups' axes hold different tokens: their counts add up.
      return (y, jax.lax.psum(overflow, _axes(groups[0]))) if counted else y
    inputs, ctx = dispatcher.dispatch(x, local_plan)
    xe = inputs.x
    if ep > 1:  # [E, N, D] -> [E/EP, EP·N, D]: rows travel to their expert.
      xe = jax.lax.all_to_all(xe, EXPERT_AXIS, 0, 1, tiled=True)
    y = expert_fn(params, inputs._replace(x=xe))
    if tp > 1:  # F is split over 'model': sum the partial products.
      y = jax.lax.psum(y, MODEL_AXIS)
    if ep > 1:  # [E/EP, EP·N, D] -> [E, N, D]: results return home.
      y = jax.lax.all_to_all(y, EXPERT_AXIS, 1, 0, tiled=True)
    return dispatcher.combine(y, local_plan, ctx)

  out = jax.shard_map(
      local, in_specs=(groups, plan_specs, weights),
      out_specs=(groups, P()) if counted else groups)(x, plan_leaves, params)
  if not counted:
    return out
  if metrics is not None:
    metrics[OVERFLOW] = out[1]
  return out[0]


def _axes(entry) -> tuple[str, ...]:
  """A PartitionSpec entry's mesh axes as a tuple."""
  if entry is None:
    return ()
  return (entry,) if isinstance(entry, str) else tuple(entry)


def parallel_moe_apply(params: dict[str, jax.Array], x: jax.Array, config,
                       **kwargs):
  """moe_jax.core.moe.moe_apply, expert-parallel when a mesh is set.

  Its own name: the core's moe_apply runs on one device unless given an
  exchange, this one is the entry point under a mesh.

  Same arguments and results (train, key, dtype, return_routing); only the
  exchange is fixed to run_experts above. With config.ep_buffer_factor set,
  aux also holds OVERFLOW, the choices the bounded exchange dropped (0 when
  nothing is exchanged: no mesh, or no expert axis).
  """
  if not config.ep_buffer_factor:
    return core_moe.moe_apply(params, x, config, run_experts=run_experts,
                              **kwargs)
  counted = {}
  run = functools.partial(run_experts, buffer_factor=config.ep_buffer_factor,
                          metrics=counted)
  y, aux = core_moe.moe_apply(params, x, config, run_experts=run, **kwargs)
  aux[OVERFLOW] = counted.get(OVERFLOW, jnp.zeros((), jnp.int32))
  return y, aux
