"""The verdict rule, stated once and applied to every claim.

A claim says one variant scores lower (better) than another. Over the seeds:
  * Welch's t-test on the two samples (a paired t-test when both come from
    the same runs, e.g. one checkpoint evaluated two ways), two-sided;
  * p < 0.05 and the difference in the claimed direction -> 'agrees';
  * p < 0.05 and the difference in the other direction -> 'disagrees';
  * otherwise (p >= 0.05, fewer than 2 seeds a side, or no variance)
    -> 'inconclusive'.
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
  """Applies the rule to the claim 'better < worse' (lower is better)."""
  a, b = np.asarray(better, float), np.asarray(worse, float)
  a, b = a[np.isfinite(a)], b[np.isfinite(b)]
  if min(len(a), len(b)) < 2:
    return Verdict('inconclusive', _diff(a, b), math.nan)
  if paired:
    n = min(len(a), len(b))
    a, b = a[:n], b[:n]
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
