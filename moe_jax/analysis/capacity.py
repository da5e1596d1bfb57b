"""The capacity counterfactual: one checkpoint, many eval capacity factors.

ST-MoE (Zoph et al. 2022, Table 8) found that evaluating a checkpoint at a
higher capacity factor than it was trained with improves quality. This asks
the same of our checkpoints without retraining: eval loss and dropped
fraction as functions of the eval capacity factor, plus the dropless
dispatcher as the no-capacity limit. It only calls
moe_jax.train.evaluate.evaluate_checkpoint, which refuses any override that
would change the parameters.
"""

from __future__ import annotations

from typing import Mapping

import ml_collections
import numpy as np

from moe_jax.data.corpus import Corpus
from moe_jax.data.pipeline import eval_windows, window_batches
from moe_jax.train.evaluate import evaluate_checkpoint

DEFAULT_FACTORS = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0)


def capacity_curve(config: ml_collections.ConfigDict, workdir: str,
                   factors=DEFAULT_FACTORS, *, dropless: bool = True,
                   **eval_overrides) -> dict[str, np.ndarray | float]:
  """Eval metrics of one checkpoint across eval capacity factors.

  Args:
    config: the config the checkpoint was trained with.
    workdir: the run's workdir.
    factors: eval capacity factors to try (per-choice or Switch convention,
      whichever the config's capacity_scales_with_k says).
    dropless: also evaluate with the dropless dispatcher.
    **eval_overrides: other eval-only fields held fixed, e.g.
      moe__min_capacity=1 so small groups are not floored.

  Returns:
    factors: float [F].
    loss: float [F] eval loss (nats/byte) at each factor.
    dropped: float [F] dropped fraction (mean over MoE layers and k-ranks).
    unrouted: float [F] share of tokens that reached no expert.
    dropless_loss: the loss with no capacity limit (NaN if not asked).
    train_capacity_factor: the factor the checkpoint was trained with.
  """
  rows = [evaluate_checkpoint(config, workdir, moe__eval_capacity_factor=cf,
                              **eval_overrides) for cf in factors]
  dropless_loss = np.nan
  if dropless:
    dropless_loss = evaluate_checkpoint(
        config, workdir, moe__dispatcher='dropless',
        **eval_overrides)['eval/loss']
  return {
      'factors': np.asarray(factors, np.float64),
      'loss': np.asarray([r['eval/loss'] for r in rows]),
      'dropped': np.asarray([r['eval/dropped_fraction'] for r in rows]),
      'unrouted': np.asarray([r['eval/unrouted_fraction'] for r in rows]),
      'dropless_loss': float(dropless_loss),
      'train_capacity_factor': float(config.moe.capacity_factor),
  }


def compare_capacity(runs: Mapping[str, tuple[ml_collections.ConfigDict, str]],
                     factors=DEFAULT_FACTORS, **kwargs
                     ) -> dict[str, dict[str, np.ndarray | float]]:
  """capacity_curve for several checkpoints, e.g. {'top-1': (cfg, dir), ...}.

  Plot the result with plots.capacity_curves to see them on one figure.
  """
  return {name: capacity_curve(cfg, workdir, factors, **kwargs)
          for name, (cfg, workdir) in runs.items()}


def domain_ordered_batches(corpus: Corpus, batch_size: int, seq_len: int,
                           max_batches: int | None = None, seed: int = 0
                           ) -> dict[str, list[dict[str, np.ndarray]]]:
  """One set of labelled validation windows batched two ways.

  'sorted': the windows stably sorted by their majority domain, so most
  batches hold one domain, as an evaluation that walks its eval sets one
  after another (Marin's TaggedEvaluator, marin-community/marin#8134);
  'shuffled': the same windows in a seeded random order, so each batch
  mixes the domains as the corpus does. Where a capacity is shared by a
  batch's tokens (moe.group_size spanning sequences), a domain's experts
  overflow more in the sorted batches; with one sequence per group the two
  orders route alike.

  Args:
    corpus: a split with domain labels (e.g. corpora.read_mix's).
    batch_size, seq_len: B and L.
    max_batches: at most this many batches, their windows spread over the
      split as eval_batches spreads them; None: every full batch.
    seed: the shuffled order.

  Returns:
    {'sorted': [...], 'shuffled': [...]}: batch dicts as eval_batches'.
  """
  starts = eval_windows(corpus, seq_len)
  count = len(starts) // batch_size
  if max_batches is not None:
    count = min(count, max_batches)
  pick = np.linspace(0, len(starts), count * batch_size, endpoint=False)
  starts = starts[pick.astype(np.int64)]
  windows = corpus.domains[starts[:, None] + np.arange(seq_len)]  # [W, L]
  majority = np.array([np.bincount(w).argmax() for w in windows])
  orders = {'sorted': np.argsort(majority, kind='stable'),
            'shuffled': np.random.default_rng(seed).permutation(len(starts))}
  return {name: window_batches(corpus, starts[order], batch_size, seq_len)
          for name, order in orders.items()}
