"""The regime every ablation trains in, chosen by experiments/regime_scan.py.

The scan's rule and result are in experiments/results_2026-11/regime_scan/summary.md;
`base_config(d_model, num_steps)` is the family it chose from, and
`regime_base(num_steps)` the chosen member. Everything else stays at the defaults of
moe_jax/config/default_config.py.
"""

from __future__ import annotations

import ml_collections

from experiments.ablation import apply_overrides
from moe_jax.config.default_config import get_default_config

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
  return apply_overrides(get_default_config(),
                         size_overrides(d_model, num_steps))


# The scan's outcome (experiments/results_2026-11/regime_scan/summary.md): no width
# met the 1% rule within the budget (falls per doubling 13.2% / 11.7% /
# 12.1% at D = 32 / 48 / 64), so by the rule's fallback the width with the
# smallest fall, D = 48, at its N(D) = 1000 steps.
REGIME_D = 48
REGIME_STEPS = 1000
# S = one sequence of 128 tokens per routing group (moe.group_size unset).
GROUP_NOTE = '128 tokens (one sequence) per group'
CAPACITY_NOTE = (
    'Capacity convention: per choice, C = ceil(K·S·cf/E) with S = '
    f'{GROUP_NOTE}, min 4; train cf 1.25, eval cf 2.0 unless a variant '
    'says otherwise. Model: D = 48, 4 layers, 4 heads, d_ff = F = 192, E = 8 '
    'in every second FFN, top-1 Switch router, α = 1e-2, c_z = 1e-3; AdamW '
    '3e-3 with 50 warmup steps and cosine decay. (The length and the data '
    'are in the line above, from the runs themselves.)')


def regime_base(num_steps: int) -> ml_collections.ConfigDict:
  """The chosen regime: switch_top1 at D = REGIME_D for `num_steps` steps."""
  return base_config(REGIME_D, num_steps)
