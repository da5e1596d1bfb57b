"""Columns computed from each run's logged curves, beside runs.csv's own.

An ablation may name some (`Ablation.derived`: column -> (row, the run's
curve points) -> number), e.g. MaxVio's step-to-step volatility from the
training log. They are computed whenever the rows are read for a report or
a verdict, from curves.csv, so a new or corrected definition applies to
runs already finished (`--report-only`) without retraining.

Curve points are curves.csv rows: {'variant', 'seed', 'step', 'metric',
'value'}; the training metrics are means over MoE layers, logged every
train.log_every steps (experiments/records.py).
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from experiments.ablation import CheckpointMetrics


def with_derived(ab, rows, curves) -> list[dict]:
  """`rows` with ab.derived's columns added (NaN where a run lacks the
  curve they need, e.g. a dense model's MaxVio)."""
  if not ab.derived:
    return list(rows)
  by_run = {}
  for c in curves:
    by_run.setdefault((c['variant'], int(c['seed'])), []).append(c)
  out = []
  for r in rows:
    points = by_run.get((r['variant'], int(r['seed'])), [])
    out.append({**r, **{name: fn(r, points)
                        for name, fn in ab.derived.items()}})
  return out


def _series(points, metric: str) -> tuple[np.ndarray, np.ndarray]:
  pts = sorted((int(p['step']), float(p['value'])) for p in points
               if p['metric'] == metric and math.isfinite(float(p['value'])))
  return (np.array([s for s, _ in pts], int),
          np.array([v for _, v in pts], float))


def late_mean(metric: str, start: float = 0.5,
              unlogged: float = math.nan) -> Callable:
  """The mean of `metric` over the logged steps past `start` of training
  (default the second half: past the early transient of the balancing).

  unlogged: the value of a run that never logs `metric` (e.g. top-2's
  experts per token, 2 by construction); NaN by default.
  """
  def compute(row, points):
    steps, values = _series(points, metric)
    if not steps.size:
      return unlogged
    late = values[steps > start * int(row['steps'])]
    return float(late.mean()) if late.size else math.nan
  return compute


def step_volatility(metric: str, start: float = 0.5) -> Callable:
  """Mean |value_t − value_{t−1}| over consecutive logged steps past
  `start` of training: how much `metric` jumps from one log to the next
  (step to step when train.log_every = 1). A steady value scores 0, one
  that alternates between a and b scores |a − b|."""
  def compute(row, points):
    steps, values = _series(points, metric)
    late = values[steps > start * int(row['steps'])]
    return float(np.mean(np.abs(np.diff(late)))) if late.size > 1 else (
        math.nan)
  return compute


def at_fraction(metric: str, fraction: float) -> Callable:
  """`metric` at the logged step nearest `fraction` of training (e.g. the
  first validation point, before the curves of two variants cross)."""
  def compute(row, points):
    steps, values = _series(points, metric)
    if not steps.size:
      return math.nan
    target = fraction * int(row['steps'])
    return float(values[int(np.argmin(np.abs(steps - target)))])
  return compute


def cpu_us_per_token(row, points) -> float:
  """Training CPU microseconds per token: train_cpu_s over the run's
  tokens (steps × batch × length, from tokens_per_sec and train_s)."""
  del points
  try:
    tokens = float(row['tokens_per_sec']) * float(row['train_s'])
    return 1e6 * float(row['train_cpu_s']) / tokens
  except (KeyError, TypeError, ValueError, ZeroDivisionError):
    return math.nan


# Columns measured on a run's last checkpoint (Ablation.checkpoint_metrics):
# they need the model, not its logs, so they are computed once when the run
# finishes (experiments/records.py) and stored in runs.csv.


def _labelled_val(config):
  """The validation split of a run trained on a write_mix corpus, with the
  mix's domain labels (the split depends only on the length, so it is the
  trainer's)."""
  from moe_jax.analysis import corpora  # Slow imports.
  from moe_jax.data.split import split_corpus
  return split_corpus(corpora.read_mix(config.data.path),
                      config.data.val_fraction, config.data.split)[1]


def domain_nmi(config, workdir) -> dict[str, float]:
  """Expert × domain normalised mutual information of a run trained on a
  labelled mix (moe_jax/analysis/corpora.py write_mix), as notebook 02
  measures it: the first-choice expert of every MoE layer traced over
  train.eval_batches windows of the validation split, NMI by
  analysis.routing.expert_label_mi, and its floor with the labels shuffled.

  Returns:
    domain_nmi and domain_nmi_floor (means over the MoE layers), and
    neg_domain_nmi = −(domain_nmi − domain_nmi_floor): lower is more
    specialised, so a claim (lower is better) can read it.
  """
  from moe_jax.analysis import routing  # Slow imports.
  from moe_jax.analysis.trace import trace_checkpoint
  from moe_jax.data.pipeline import eval_batches
  batches = eval_batches(_labelled_val(config), config.batch_size,
                         config.seq_len, config.train.eval_batches)
  trace = trace_checkpoint(config, str(workdir), batches=batches)
  mi = routing.expert_label_mi(trace, trace.domain)
  nmi = float(np.mean(mi['nmi']))
  floor = float(np.mean(mi['nmi_shuffled']))
  return {'domain_nmi': nmi, 'domain_nmi_floor': floor,
          'neg_domain_nmi': floor - nmi}


DOMAIN_NMI = CheckpointMetrics(
    ('domain_nmi', 'domain_nmi_floor', 'neg_domain_nmi'), domain_nmi)


def sorted_eval(factor: float) -> CheckpointMetrics:
  """Eval loss and dropped fraction at eval capacity factor `factor` with
  one capacity per batch (moe.group_size = B·L), on the same validation
  windows batched domain by domain ('sorted') and shuffled
  (analysis/capacity.py domain_ordered_batches; train.eval_batches
  batches), and the dropless loss of those windows, which no order
  changes. Columns: eval_loss_{sorted,shuffled}_cf<f>,
  eval_dropped_{sorted,shuffled}_cf<f>, eval_loss_dropless and
  sorted_penalty_cf<f> (sorted minus shuffled loss)."""
  tag = f'cf{factor:g}'

  def measure(config, workdir) -> dict[str, float]:
    from moe_jax.analysis import capacity  # Slow import.
    orders = capacity.domain_ordered_batches(
        _labelled_val(config), config.batch_size, config.seq_len,
        config.train.eval_batches)
    out = {}
    for name, batches in orders.items():
      batches = [{k: v for k, v in b.items() if k != 'domains'}
                 for b in batches]
      curve = capacity.capacity_curve(
          config, str(workdir), (factor,), dropless=name == 'shuffled',
          batches=batches,
          moe__group_size=config.batch_size * config.seq_len)
      out[f'eval_loss_{name}_{tag}'] = float(curve['loss'][0])
      out[f'eval_dropped_{name}_{tag}'] = float(curve['dropped'][0])
      if name == 'shuffled':
        out['eval_loss_dropless'] = curve['dropless_loss']
    out[f'sorted_penalty_{tag}'] = (out[f'eval_loss_sorted_{tag}'] -
                                    out[f'eval_loss_shuffled_{tag}'])
    return out

  columns = tuple(f'eval_{m}_{o}_{tag}' for m in ('loss', 'dropped')
                  for o in ('sorted', 'shuffled')) + (
                      'eval_loss_dropless', f'sorted_penalty_{tag}')
  return CheckpointMetrics(columns, measure)
