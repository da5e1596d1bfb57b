"""Routing across layers and along the sequence.

Two questions about structure a per-token histogram cannot show: does a
token's expert in one MoE layer predict its expert in the next (transition
matrices), and do neighbouring tokens share experts more than chance
(consecutive-token reuse, the analysis of the Mixtral paper, Jiang et al.
2024, Sec. 5, which found 23.6-28.4% first-choice reuse in layer 15 against
12.5% chance with 8 experts)? Shape letters: M MoE layers, N tokens, K
choices, E experts.
"""

from __future__ import annotations

import math

import numpy as np

from moe_jax.analysis.trace import RoutingTrace

REUSE_MODES = ('first', 'any')


def transition_counts(trace: RoutingTrace, rank: int = 0) -> np.ndarray:
  """int [M-1, E, E]: [m, i, j] counts tokens whose rank-`rank` expert is i in
  MoE layer m and j in MoE layer m+1.

  Row-normalised, it is P(expert in the next layer | expert in this one); a
  permutation-like matrix means the layers route the same partition of
  tokens, a flat one that they route independently. Tokens whose choice at
  that rank is not routed in either layer (a null expert, or no expert of
  a ReLU router) are left out.
  """
  e = trace.num_experts
  out = np.zeros((max(trace.num_layers - 1, 0), e, e), np.int64)
  for m in range(trace.num_layers - 1):
    both = trace.routed[m, :, rank] & trace.routed[m + 1, :, rank]
    flat = (trace.expert[m, both, rank] * e +
            trace.expert[m + 1, both, rank])
    out[m] = np.bincount(flat, minlength=e * e).reshape(e, e)
  return out


def consecutive_pairs(trace: RoutingTrace) -> np.ndarray:
  """int [P]: indices i such that tokens i and i+1 are neighbours in one
  sequence (a pair never straddles two sequences)."""
  same = (trace.sequence[1:] == trace.sequence[:-1]) & (
      trace.position[1:] == trace.position[:-1] + 1)
  return np.nonzero(same)[0]


def _multi_hot(expert: np.ndarray, routed: np.ndarray,
               num_experts: int) -> np.ndarray:
  """bool [N, E]: the set of real experts each token was routed to."""
  hot = np.zeros((expert.shape[0], num_experts + 1), bool)
  # Unrouted choices land in a spare last column, then cut off.
  np.put_along_axis(hot, np.where(routed, expert, num_experts), True, axis=1)
  return hot[:, :num_experts]


def _set_overlap_chance(a: np.ndarray, b: np.ndarray) -> float:
  """P(two independent draws, one from each row set, share an expert)."""
  sets_a, count_a = np.unique(a, axis=0, return_counts=True)
  sets_b, count_b = np.unique(b, axis=0, return_counts=True)
  overlap = (sets_a.astype(np.int64) @ sets_b.T.astype(np.int64)) > 0
  p_a, p_b = count_a / count_a.sum(), count_b / count_b.sum()
  return float(p_a @ overlap @ p_b)


def uniform_reuse_chance(num_experts: int, top_k: int, mode: str) -> float:
  """Reuse rate of a router choosing uniformly at random, independently.

  'first': 1/E. 'any': 1 - C(E-K, K) / C(E, K), the chance that two random
  K-subsets of E experts intersect.
  """
  if mode == 'first':
    return 1.0 / num_experts
  return 1.0 - math.comb(num_experts - top_k, top_k) / math.comb(
      num_experts, top_k)


def reuse_rate(trace: RoutingTrace, mode: str = 'first'
               ) -> dict[str, np.ndarray]:
  """How often consecutive tokens reuse an expert, against chance (Mixtral
  paper, Jiang et al. 2024, Sec. 5).

  Args:
    trace: the routing trace.
    mode: 'first': token i+1's first choice equals token i's first choice
      (over the pairs whose first choices are both routed);
      'any': their sets of routed experts share at least one expert.

  Returns:
    rate: float [M] the observed reuse rate over all neighbour pairs.
    chance: float [M] the rate if the two tokens chose independently, each
      from the layer's observed distribution of choices (so an imbalanced
      router does not count as "reuse"). For 'first' it is
      Σ_e p_e q_e, with p and q the expert shares of the first and second
      tokens of the pairs.
    uniform: float, the chance rate of a uniform router
      (uniform_reuse_chance), the 12.5% the Mixtral paper quotes for E = 8.
    pairs: int, the number of neighbour pairs.
  """
  if mode not in REUSE_MODES:
    raise ValueError(f'mode={mode!r} is not one of {REUSE_MODES}.')
  i = consecutive_pairs(trace)
  e, k = trace.num_experts, trace.top_k
  rate, chance = [], []
  for m in range(trace.num_layers):
    if mode == 'first':
      j = i[trace.routed[m, i, 0] & trace.routed[m, i + 1, 0]]
      a, b = trace.expert[m, j, 0], trace.expert[m, j + 1, 0]
      rate.append(np.mean(a == b) if j.size else np.nan)
      p = np.bincount(a, minlength=e) / max(j.size, 1)
      q = np.bincount(b, minlength=e) / max(j.size, 1)
      chance.append(float(p @ q))
    else:
      hot = _multi_hot(trace.expert[m], trace.routed[m], e)
      a, b = hot[i], hot[i + 1]
      rate.append(np.mean(np.any(a & b, axis=1)) if i.size else np.nan)
      chance.append(_set_overlap_chance(a, b) if i.size else np.nan)
  return {'rate': np.asarray(rate, np.float64),
          'chance': np.asarray(chance, np.float64),
          'uniform': uniform_reuse_chance(e, k, mode),
          'pairs': int(i.size)}
