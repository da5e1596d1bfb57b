"""The regime every ablation trains in, chosen by experiments/regime_scan.py.

The scan's rule and result are in experiments/results/regime_scan/summary.md;
`base_config(d_model, num_steps)` is the family it chose from, and
`REGIME` the chosen member. Everything else stays at the defaults of
moe_jax/train/default_config.py.
"""

from __future__ import annotations

import ml_collections

from moe_jax.train.default_config import get_default_config

# Widths the scan considered (4 layers, 4 heads, d_ff = 4·D, E = 8, every
# second FFN an MoE layer, as in configs/switch_top1.py).
CANDIDATE_WIDTHS = (32, 48, 64)


def size_overrides(d_model: int, num_steps: int) -> dict:
  """The fields that set the width and length of a run (dotted names)."""
  return {
      'model.d_model': d_model, 'model.d_ff': 4 * d_model,
      'moe.d_ff': 4 * d_model, 'train.num_steps': num_steps,
      # Eight evaluations make the validation curve; 32 batches (65k bytes)
      # keep the eval noise well below the seed-to-seed spread.
      'train.eval_every': max(1, num_steps // 8),
      'train.checkpoint_every': max(1, num_steps // 4),
      'train.log_every': max(1, num_steps // 40),
      'train.eval_batches': 32,
  }


def base_config(d_model: int, num_steps: int) -> ml_collections.ConfigDict:
  """switch_top1 at width `d_model`, trained `num_steps` steps."""
  from experiments.ablation import apply_overrides  # pylint: disable=g-import-not-at-top
  return apply_overrides(get_default_config(),
                         size_overrides(d_model, num_steps))
