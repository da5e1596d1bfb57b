"""The verdict of each claim of an ablation, from its runs.csv rows.

Pairs the two sides on their common seeds (Welch only where a run
diverged), reads equal-time claims off the validation curves, and gives
each claim its minimum detectable effect (experiments/verdict.py holds the
rule itself).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from experiments import derived
from experiments import verdict as verdict_lib


def by_seed(rows, variant: str, column: str) -> dict[int, float]:
  """{seed: value} of the finite values of `column` for `variant`."""
  out = {}
  for r in rows:
    if r['variant'] == variant:
      try:
        v = float(r[column])
      except (KeyError, TypeError, ValueError):
        continue
      if math.isfinite(v):
        out[int(r['seed'])] = v
  return out


@dataclasses.dataclass(frozen=True)
class Judged:
  """One claim's verdict and the numbers it came from."""
  comparison: Any
  verdict: verdict_lib.Verdict
  better: list[float]  # Per seed, in `seeds` order when paired.
  worse: list[float]
  seeds: list[int]  # The seeds compared (paired), or those of `better`.
  mde: float  # Minimum detectable effect at 80% power (verdict.py).
  seeds_for_001: int | None  # Paired seeds to detect 0.01 (losses only).
  note: str  # Seeds left out, or the diverged run that forced Welch.

  @property
  def measured(self) -> bool:
    """Whether both sides have runs (a partly run ablation's claims on its
    unrun variants have nothing to judge)."""
    return bool(self.better and self.worse)


def _diverged(rows, variant: str) -> list[int]:
  return sorted(int(r['seed']) for r in rows if r['variant'] == variant and
                str(r.get('status', 'ok')) != 'ok')


def time_column(rows) -> str:
  """'train_cpu_s' when every run recorded it, else the wall-clock 'train_s'.

  Rows written before 2026-12-06 have only wall-clock time, which other jobs
  on the machine inflate.
  """
  def has(r):
    value = r.get('train_cpu_s')
    return value not in (None, '') and math.isfinite(float(value))
  return 'train_cpu_s' if rows and all(has(r) for r in rows) else 'train_s'


def at_equal_time(curves, rows, comp, seeds) -> tuple[list, list]:
  """Each side's curve value at the training time of the pair's faster run.

  A run's step s is at s × T / steps seconds, T its training time
  (time_column of the two sides: CPU seconds where both recorded them;
  compilation and evaluation excluded); values between two evaluations are
  interpolated linearly.
  """
  # The clock of the two sides only: a third variant reused from runs that
  # predate CPU timing (e.g. top1_vs_top2's dense rows) must not send the
  # pair back to wall time, which other jobs inflate.
  clock = time_column([r for r in rows
                       if r['variant'] in (comp.better[0], comp.worse[0])])
  # `metric` and `clock` must stay two names: when they were one, a run's
  # eval loss became its time per step.
  def curve_at(variant, metric, seed, seconds):
    row = next(r for r in rows if r['variant'] == variant and
               int(r['seed']) == seed)
    pts = sorted((int(c['step']), float(c['value'])) for c in curves
                 if c['variant'] == variant and int(c['seed']) == seed and
                 c['metric'] == metric)
    per_step = float(row[clock]) / int(row['steps'])
    return float(np.interp(seconds, [s * per_step for s, _ in pts],
                           [v for _, v in pts]))

  a, b = [], []
  for seed in seeds:
    times = [float(by_seed(rows, v, clock)[seed])
             for v in (comp.better[0], comp.worse[0])]
    a.append(curve_at(*comp.better, seed, min(times)))
    b.append(curve_at(*comp.worse, seed, min(times)))
  return a, b


def verdicts(ab, rows, curves=()) -> list[Judged]:
  """The rule of experiments/verdict.py applied to each claim.

  Paired on the seeds both sides have. Welch on all finite values only when
  a run of either side diverged, since its seed has nothing to pair with.
  """
  out = []
  rows = derived.with_derived(ab, rows, curves)
  for comp in ab.comparisons:
    a, b = by_seed(rows, *comp.better), by_seed(rows, *comp.worse)
    common = sorted(set(a) & set(b))
    diverged = {v: _diverged(rows, v) for v in (comp.better[0],
                                                comp.worse[0])}
    notes = [f'{v} seed {s} diverged' for v, ss in diverged.items()
             for s in ss]
    paired = not notes
    if paired:
      xa, xb = [a[s] for s in common], [b[s] for s in common]
      if comp.basis == 'equal time' and common:
        xa, xb = at_equal_time(curves, rows, comp, common)
      missing = [v for v, xs in ((comp.better[0], a), (comp.worse[0], b))
                 if not xs]
      left = sorted(set(a) ^ set(b))
      if missing:
        notes.append('no runs of ' + ' or '.join(missing) + ' yet')
      elif left:
        notes.append('seeds without a pair left out: ' +
                     ', '.join(map(str, left)))
      diffs = np.subtract(xa, xb)
      sd = float(np.std(diffs, ddof=1)) if len(diffs) > 1 else math.nan
      mde = verdict_lib.min_detectable_effect(sd, len(diffs))
      seeds = common
    else:
      xa, xb = list(a.values()), list(b.values())
      notes.append("Welch's test on all finite values")
      pooled = (float(np.sqrt((np.var(xa, ddof=1) + np.var(xb, ddof=1)) / 2))
                if min(len(xa), len(xb)) > 1 else math.nan)
      sd, seeds = pooled, sorted(a)
      mde = verdict_lib.min_detectable_effect(sd, len(xa), False, len(xb))
    needed = (verdict_lib.seeds_needed(sd, 0.01)
              if paired and comp.better[1].startswith('eval_loss') else None)
    out.append(Judged(comp, verdict_lib.judge(xa, xb, paired=paired), xa,
                      xb, seeds, mde, needed, '; '.join(notes)))
  return out
