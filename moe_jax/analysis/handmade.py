"""Routing traces built by hand, for tests and toy examples: the analyses
(routing, drops, dynamics, plots) read any RoutingTrace, so known inputs
give known answers without a model."""

from __future__ import annotations

from typing import Any

import numpy as np

from moe_jax.analysis.trace import FORMAT_VERSION, NO_DOMAIN, RoutingTrace


def trace_from_arrays(expert: np.ndarray, num_experts: int, *,
                      seq_len: int | None = None,
                      group_size: int | None = None,
                      tokens: np.ndarray | None = None,
                      domain: np.ndarray | None = None,
                      dropped: np.ndarray | None = None,
                      probs: np.ndarray | None = None,
                      routed: np.ndarray | None = None,
                      num_null_experts: int = 0,
                      meta: dict[str, Any] | None = None) -> RoutingTrace:
  """A trace built by hand (tests, toy examples), defaults filled in.

  Args:
    expert: int [M, N, K] (or [N, K] for one layer) chosen experts.
    num_experts: E.
    seq_len: L, tokens per sequence (default: one sequence of N tokens).
    group_size: S (default L).
    tokens, domain: int [N] (default 0 and NO_DOMAIN).
    dropped: bool like expert (default none dropped).
    probs: float [M, N, E + N] (default one-hot on the first choice).
    routed: bool like expert (default: the choices of real experts).
    num_null_experts: N; indices num_experts.. are null experts.
  """
  expert = np.asarray(expert, np.int32)
  if expert.ndim == 2:
    expert = expert[None]
  m, n, k = expert.shape
  seq_len = seq_len or n
  group_size = group_size or seq_len
  flat = np.arange(n)
  outputs = num_experts + num_null_experts
  if probs is None:
    probs = np.eye(outputs, dtype=np.float32)[expert[..., 0]]
  probs = np.asarray(probs, np.float32).reshape(m, n, outputs)
  dropped = (np.zeros(expert.shape, bool) if dropped is None else
             np.asarray(dropped, bool).reshape(expert.shape))
  routed = (expert < num_experts if routed is None else
            np.asarray(routed, bool).reshape(expert.shape))
  prob = np.take_along_axis(probs, expert, axis=-1)
  return RoutingTrace(
      tokens=np.zeros(n, np.int32) if tokens is None else
      np.asarray(tokens, np.int32),
      sequence=(flat // seq_len).astype(np.int32),
      position=(flat % seq_len).astype(np.int32),
      group_position=(flat % group_size).astype(np.int32),
      domain=np.full(n, NO_DOMAIN, np.int32) if domain is None else
      np.asarray(domain, np.int32),
      loss=np.zeros(n, np.float32),
      layers=np.arange(m, dtype=np.int32),
      expert=expert,
      gate=np.where(routed & ~dropped, prob, 0.0).astype(np.float32),
      prob=prob, probs=probs, routed=routed, dropped=dropped & routed,
      meta={'format_version': FORMAT_VERSION, 'num_experts': num_experts,
            'num_null_experts': num_null_experts, 'top_k': k,
            'capacity': None, 'group_size': group_size,
            'layers': list(range(m)), **(meta or {})})
