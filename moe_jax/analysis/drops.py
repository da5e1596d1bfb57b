"""Where capacity drops happen: by expert, position in the group, and k-rank.

Capacity is claimed rank by rank and, within a rank, in group order
(core/capacity.py, after GShard Algorithm 1), so drops are expected to pile
up on overloaded experts, late in the group, and on second choices. These
functions measure that on a trace. Shape letters: M MoE layers, N tokens,
K choices, E experts, S tokens per group.
"""

from __future__ import annotations

import numpy as np

from moe_jax.analysis.trace import RoutingTrace


def drops_by_expert(trace: RoutingTrace) -> dict[str, np.ndarray]:
  """Drops attributed to the expert that was full.

  Returns:
    routed: int [M, E] routed choices sent to each expert (all ranks).
    dropped: int [M, E] of those, the ones over capacity.
    rate: float [M, E] dropped / routed (0 where nothing was routed).
    share: float [M, E] each expert's part of the layer's drops (rows sum
      to 1 where anything dropped).
  """
  e = trace.num_experts
  routed = np.stack([np.bincount(x[r], minlength=e)
                     for x, r in zip(trace.expert, trace.routed)])
  dropped = np.stack([np.bincount(x[d], minlength=e)
                      for x, d in zip(trace.expert, trace.dropped)])
  return {'routed': routed, 'dropped': dropped,
          'rate': dropped / np.maximum(routed, 1),
          'share': dropped / np.maximum(dropped.sum(-1, keepdims=True), 1)}


def drops_by_rank(trace: RoutingTrace) -> np.ndarray:
  """float [M, K]: share of tokens whose k-th choice was dropped (the
  logged 'dropped_fraction', per layer, for the top-k routers; ReLU routing
  logs the share of routed choices dropped, trace.dropped.sum() /
  trace.routed.sum())."""
  return trace.dropped.mean(axis=1)


def drops_by_group_position(trace: RoutingTrace) -> np.ndarray:
  """float [M, K, S]: drop rate of the k-th choice at each position of the
  routing group (position = the order in which tokens claim capacity)."""
  s = int(trace.group_position.max()) + 1
  seen = np.maximum(np.bincount(trace.group_position, minlength=s), 1)
  out = np.zeros((trace.num_layers, trace.top_k, s))
  for m in range(trace.num_layers):
    for k in range(trace.top_k):
      out[m, k] = np.bincount(trace.group_position,
                              weights=trace.dropped[m, :, k], minlength=s) / seen
  return out


def loss_by_drop(trace: RoutingTrace) -> dict[str, np.ndarray]:
  """Mean next-byte loss of tokens with and without a dropped choice.

  A drop zeroes that choice's expert output (only the residual carries the
  token), so a large gap says drops cost quality, not just compute. It is
  correlation: hard tokens may also be the ones routed to crowded experts.

  Returns:
    dropped, kept: float [M] mean loss (nats) of tokens with at least one
      dropped choice in the layer, and of the rest (NaN if there are none).
    count_dropped: int [M].
  """
  any_drop = trace.dropped.any(-1)  # [M, N]
  def mean(mask):
    return np.asarray([trace.loss[x].mean() if x.any() else np.nan
                       for x in mask])
  return {'dropped': mean(any_drop), 'kept': mean(~any_drop),
          'count_dropped': any_drop.sum(-1)}
