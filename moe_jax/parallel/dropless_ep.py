"""Dropless expert parallelism: every routed choice reaches its expert's
device, with no capacity.

Per device, inside shard_map over the 'expert' axis (P devices, E/P experts
each, M = G_l·S·K local choices):

  counts     [E] routed choices per expert -> all_to_all -> [P, E/P]: what
             each source sends to each of our experts (the receive sizes)
  send       choices sorted by expert, slot p of [P, M, D] holding those for
             device p's experts (real rows first, then 0)
  exchange   [P, M, D] -> [P, M, D] (ragged_exchange: ragged all-to-all on
             GPU/TPU, dense all-to-all on CPU)
  experts    the received rows are a dropless batch of their own: K = 1, unit
             gates, local expert ids read off the counts; the configured
             dropless dispatcher sorts them and runs the experts
  exchange   back, sizes swapped; then each token sums its K gated rows.

The static bound: a slot holds M rows, all of a device's choices, because
any routing may send all of them to one device; the receive buffer P·M is
then every choice of the P devices. Nothing can overflow, so nothing is
dropped whatever the routing. The price is memory and, for the dense CPU
exchange, traffic: P·M rows per device each way, P times what is sent on
average. The ragged exchange moves only the real rows, and the experts skip
the empty rows on every backend (blocked and grouped matmuls know the
counts), so on GPU/TPU the bound costs memory, not bandwidth or FLOPs.

The bounded buffer (MoEConfig.ep_buffer_factor = f; MaxText's
ragged_buffer_factor, axlearn's expert_parallel_capacity): balanced routing
sends M/P of a device's choices to each device, so each receives M in all.
A slot then holds R = ceil(f·M/P) rows (at most M), and the receive buffer
P·R is f times the balanced load; f >= P gives R = M, the worst case above.
A slot keeps its first R rows in the order it is sorted (by local expert,
then by token), so what does not fit is the last experts' and tokens' rows
of that source-destination pair. Those choices are dropped (their gate
weight reaches no expert, as a capacity drop) and counted; MoEConfig's
ep_overflow says whether the step is then rerun with R = M
(moe_jax/train/ep_retry.py) or kept. The per-pair bound is what the dense
exchange needs (every slot has the same size); both exchanges use it, so
they stay interchangeable.
"""

from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core.dispatch import Dispatcher, run_local
from moe_jax.core.dispatch.index import combine_rows, rows_from_choices
from moe_jax.core.plan import DROPPED, RoutingPlan, segment_of
from moe_jax.parallel.ragged_exchange import exchange


def slot_rows(num_choices: int, num_devices: int,
              buffer_factor: float | None) -> int:
  """R, the rows of one source-destination slot.

  Args:
    num_choices: M = G_l·S·K, a device's routed choices (static).
    num_devices: P, the devices of the expert axis.
    buffer_factor: f; None or 0: the worst case, R = M.

  Returns:
    ceil(f·M/P), at least 1 and at most M (more could never fill).
  """
  if not buffer_factor:
    return num_choices
  return max(1, min(num_choices, math.ceil(
      buffer_factor * num_choices / num_devices)))


def destination_layout(plan: RoutingPlan, num_devices: int,
                       rows: int | None = None):
  """Where each routed choice sits in the send buffers [P, R, D].

  Args:
    plan: the device's dropless plan over all E experts.
    num_devices: P.
    rows: R, the rows of a slot (slot_rows); None: M, where all fit.

  Returns:
    row: int32 [M], the flat buffer row of each choice; P·R if unrouted or
      past its slot's R rows.
    choice: int32 [P·R], the choice in each row; M for padding rows.
    counts: int32 [P, E/P], rows sent per destination and its expert (the
      routed choices that fit).
    overflow: int32 scalar, routed choices that did not fit.
  """
  g, s, k = plan.shape
  m, p = g * s * k, num_devices
  r_slot = m if rows is None else rows
  key, sizes = plan.expert_sort_key()
  routed = sizes.reshape(p, -1).astype(jnp.int32)  # [P, E/P]
  per_device = jnp.sum(routed, axis=1)  # [P]
  first = jnp.cumsum(per_device) - per_device  # Sorted position of slot p.
  order = jnp.argsort(key, stable=True)  # Sorted position -> choice.
  # Sorting by expert sorts by device (experts are split in order), and
  # keeps each slot sorted by expert, as the receiver expects.
  position = jnp.argsort(order)  # Choice -> sorted position (no scatter).
  dest = jnp.minimum(key // routed.shape[1], p - 1)
  rank = position - first[dest]  # Place in its slot.
  fits = (key < plan.num_experts) & (rank < r_slot)
  row = jnp.where(fits, dest * r_slot + rank, p * r_slot).astype(jnp.int32)
  r = jnp.arange(p * r_slot, dtype=jnp.int32)
  slot, rank = r // r_slot, r % r_slot
  filled = rank < per_device[slot]
  choice = order[jnp.where(filled, first[slot] + rank, 0)]
  choice = jnp.where(filled, choice, m).astype(jnp.int32)
  # A slot keeps its first R rows: each expert's share of them.
  kept_ends = jnp.minimum(jnp.cumsum(routed, axis=1), r_slot)
  counts = jnp.diff(kept_ends, axis=1, prepend=0)
  overflow = jnp.sum(per_device) - jnp.sum(kept_ends[:, -1])
  return row, choice, counts, overflow


def received_plan(counts: jax.Array, slot_rows: int) -> RoutingPlan:
  """The plan of the received rows [P, M, D] as one group [1, P·M, 1].

  Slot s holds counts[s].sum() rows sorted by local expert, then padding;
  each row is one choice with gate 1 (the sender applies the real gates).

  Args:
    counts: int32 [P, E_l] rows per source and local expert.
    slot_rows: M, the rows of a slot.
  """
  p, e_local = counts.shape
  ends = jnp.cumsum(counts, axis=1)  # [P, E_l]
  rank = jnp.arange(slot_rows, dtype=jnp.int32)
  expert = jax.vmap(segment_of, in_axes=(0, None))(ends, rank)  # [P, M]
  real = rank[None, :] < ends[:, -1:]
  shape = (1, p * slot_rows, 1)
  return RoutingPlan(
      expert_index=expert.reshape(shape),
      combine_weights=jnp.ones(shape, jnp.float32),
      slot=jnp.where(real, rank[None, :], DROPPED).reshape(shape),
      num_experts=e_local, capacity=None)


def dropless_experts(x: jax.Array, plan: RoutingPlan,
                     params: dict[str, jax.Array], dispatcher: Dispatcher,
                     expert_fn: Callable, axis_name: str,
                     impl: str | None = None,
                     buffer_factor: float | None = None
                     ) -> tuple[jax.Array, jax.Array]:
  """One device's share of a dropless MoE over the experts of `axis_name`.

  Args:
    x: [G_l, S, D] this device's tokens.
    plan: their dropless plan, over all E experts.
    params: this device's E/P experts' weights, each [E/P, ...].
    dispatcher: a dropless dispatcher, for the received rows.
    expert_fn: (params, ExpertInputs) -> outputs.
    axis_name: the expert mesh axis (P devices).
    impl: the exchange implementation (see ragged_exchange), None: default.
    buffer_factor: f, the slots' size as a multiple of the balanced load
      (slot_rows); None or 0: the worst case, where nothing overflows.

  Returns:
    y: [G_l, S, D] the tokens' gate-weighted expert outputs.
    overflow: int32 scalar, this device's choices that did not fit (0
      without a buffer_factor); their rows are missing from y.
  """
  g, s, k = plan.shape
  d = x.shape[-1]
  p = jax.lax.axis_size(axis_name)
  r = slot_rows(g * s * k, p, buffer_factor)
  row, choice, counts, overflow = destination_layout(plan, p, r)
  # The counts go first: they are each receiver's sizes and expert ids.
  received = jax.lax.all_to_all(counts, axis_name, 0, 0, tiled=True)
  sent, got = jnp.sum(counts, axis=1), jnp.sum(received, axis=1)

  buffers = rows_from_choices(x, plan, choice, row).reshape(p, r, d)
  rows = exchange(buffers, sent, got, axis_name, impl)
  local_plan = received_plan(received, r)
  y = run_local(rows.reshape(1, p * r, d), local_plan, params, dispatcher,
                expert_fn)
  back = exchange(y.reshape(p, r, d), got, sent, axis_name, impl)
  return combine_rows(back.reshape(p * r, d), plan, row, choice), overflow
