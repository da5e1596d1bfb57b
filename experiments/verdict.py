"""The verdict rule, stated once and applied to every claim.

A claim says one variant scores lower (better) than another. Over the seeds:
  * a paired t-test on the per-seed differences over the seeds both sides
    have (runs with one seed share their initialisation and see the same
    batches in the same order); Welch's t-test on all finite values only when
    a run of the comparison diverged (its seed has no value to pair), and the
    summary then names that run; two-sided;
  * p < 0.05 and the difference in the claimed direction -> 'agrees';
  * p < 0.05 and the difference in the other direction -> 'disagrees';
  * otherwise (p >= 0.05, fewer than 2 seeds a side, or no variance)
    -> 'inconclusive'.

Every verdict also states its minimum detectable effect (mde): the true
difference the test would find with 80% power at the seeds it has, given the
measured spread of the per-seed differences. An inconclusive verdict then
reads "no effect larger than the mde", which is a result.

History: the rule was Welch's test for every claim until the first two seeds
of the dense pilot differed by 0.07 nats/byte, far more than the effects under
test; it became paired by seed before any MoE run had finished. Until
2026-12 it fell back to Welch whenever the sides had different seeds (e.g.
5 dense seeds against 3 top-2 seeds); since then it pairs on the common seeds
and keeps Welch for diverged runs only. The mde was added then.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05
POWER = 0.8


@dataclasses.dataclass(frozen=True)
class Verdict:
  verdict: str  # 'agrees' | 'disagrees' | 'inconclusive'
  difference: float  # mean(better) - mean(worse); the claim says < 0.
  p_value: float


def judge(better: Sequence[float], worse: Sequence[float], *,
          paired: bool = False) -> Verdict:
  """Applies the rule to the claim 'better < worse' (lower is better).

  paired: the i-th values of both sides come from the same seed.
  """
  a, b = np.asarray(better, float), np.asarray(worse, float)
  a, b = a[np.isfinite(a)], b[np.isfinite(b)]
  if min(len(a), len(b)) < 2:
    return Verdict('inconclusive', _diff(a, b), math.nan)
  if paired:
    if len(a) != len(b):
      raise ValueError('paired samples need one value per seed on each side')
    test = stats.ttest_rel(a, b)
  else:
    test = stats.ttest_ind(a, b, equal_var=False)
  p, diff = float(test.pvalue), _diff(a, b)
  if not math.isfinite(p) or p >= ALPHA:
    return Verdict('inconclusive', diff, p)
  return Verdict('agrees' if diff < 0 else 'disagrees', diff, p)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
  if len(a) == 0 or len(b) == 0:
    return math.nan
  return float(a.mean() - b.mean())


def power(effect: float, sd: float, n: int, paired: bool = True,
          n_other: int | None = None) -> float:
  """Power of the two-sided t-test at level ALPHA to find a true `effect`.

  paired: n pairs whose differences have standard deviation `sd`.
  Otherwise two samples of n and n_other values, each with spread `sd`.
  """
  if paired:
    df, se = n - 1, sd / math.sqrt(n)
  else:
    df, se = n + n_other - 2, sd * math.sqrt(1 / n + 1 / n_other)
  crit, ncp = stats.t.ppf(1 - ALPHA / 2, df), effect / se
  p = float(stats.nct.sf(crit, df, ncp) + stats.nct.cdf(-crit, df, ncp))
  if not math.isfinite(p):  # scipy's nct fails far out in the tail, where
    # the normal approximation is exact enough.
    p = float(stats.norm.sf(crit - ncp) + stats.norm.cdf(-crit - ncp))
  return p


def min_detectable_effect(sd: float, n: int, paired: bool = True,
                          n_other: int | None = None) -> float:
  """The true difference found with POWER (80%) at these seeds and spread."""
  if n < 2 or not math.isfinite(sd) or sd <= 0 or (
      not paired and (n_other or 0) < 2):
    return math.nan
  from scipy import optimize  # pylint: disable=g-import-not-at-top
  hi = sd
  while power(hi, sd, n, paired, n_other) < POWER:
    hi *= 2
  return float(optimize.brentq(
      lambda d: power(d, sd, n, paired, n_other) - POWER, 0.0, hi,
      xtol=sd * 1e-6))


def seeds_needed(sd: float, effect: float, limit: int = 1000) -> int | None:
  """Seeds (pairs) for POWER to find `effect` at this paired spread."""
  if not math.isfinite(sd) or sd <= 0:
    return None
  for n in range(2, limit + 1):
    if power(effect, sd, n) >= POWER:
      return n
  return None
