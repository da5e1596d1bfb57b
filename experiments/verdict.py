"""The verdict rule, stated once and applied to every claim.

A claim says one variant scores lower (better) than another. Over the seeds:
  * a paired t-test on the per-seed differences when both sides have the same
    seeds (runs with one seed see the same batches in the same order, so
    pairing removes the data-order part of the seed-to-seed spread);
    Welch's t-test when they do not (e.g. a run diverged); two-sided;
  * p < 0.05 and the difference in the claimed direction -> 'agrees';
  * p < 0.05 and the difference in the other direction -> 'disagrees';
  * otherwise (p >= 0.05, fewer than 2 seeds a side, or no variance)
    -> 'inconclusive'.

History: the rule was Welch's test for every claim until the first two seeds
of the dense pilot differed by 0.07 nats/byte, far more than the effects under
test; it became paired by seed before any MoE run had finished.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05


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
