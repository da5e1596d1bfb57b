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
