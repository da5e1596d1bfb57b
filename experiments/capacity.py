"""Ablation 2: the train capacity factor, then eval capacity factors on the
same checkpoints (no retraining).

  python -m experiments.run capacity          # 3 seeds, 15 runs
  python -m experiments.run capacity --quick

ST-MoE Table 8 (top-1): train cf 0.75 -> 1.0 -> 1.25 improves quality, with
gains flattening after 1.25; evaluating a cf-1.0 checkpoint at eval cf 2.0
instead of 1.0 improves it. Every checkpoint here is also evaluated at eval
cf 1.0, 1.25, 2.0 and 4.0 and with the dropless dispatcher (no capacity).
"""

from __future__ import annotations

from experiments import plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant

TRAIN_CFS = (0.5, 0.75, 1.0, 1.25, 2.0)
EVALS = {f'cf{cf}': {'moe.eval_capacity_factor': cf}
         for cf in (1.0, 1.25, 2.0, 4.0)}
EVALS['dropless'] = {'moe.dispatcher': 'dropless'}

ABLATION = Ablation(
    name='capacity',
    title='train capacity factor, and eval capacity factor on the same checkpoints',
    source='ST-MoE Table 8',
    base=regime_config.regime_base,
    variants=tuple(Variant(f'train_cf{cf}', {'moe.capacity_factor': cf})
                   for cf in TRAIN_CFS),
    comparisons=(
        Comparison('ST-MoE T8: train cf 1.0 beats 0.75 (eval cf 2.0)',
                   ('train_cf1.0', 'eval_loss@cf2.0'),
                   ('train_cf0.75', 'eval_loss@cf2.0'), 'equal steps'),
        Comparison('ST-MoE T8: train cf 1.25 beats 1.0 (eval cf 2.0)',
                   ('train_cf1.25', 'eval_loss@cf2.0'),
                   ('train_cf1.0', 'eval_loss@cf2.0'), 'equal steps'),
        Comparison('ST-MoE T8: a cf-1.0 checkpoint is better at eval cf 2.0 '
                   'than at 1.0', ('train_cf1.0', 'eval_loss@cf2.0'),
                   ('train_cf1.0', 'eval_loss@cf1.0'), 'same checkpoint'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    extra_evals=EVALS,
    notes=regime_config.CAPACITY_NOTE,
    plot=plots.eval_capacity,
)
