"""Ablation 3: the load-balancing loss weight α.

  python -m experiments.run aux_weight        # 3 seeds, 12 runs
  python -m experiments.run aux_weight --quick

Shazeer et al. 2017 Table 6: without a balance loss the load is far worse
balanced (CV 3.01, max/mean load 17.8) and perplexity worse (39.8 vs ~35.7);
any nonzero weight does about equally well. Switch uses α = 1e-2.
"""

from __future__ import annotations

from experiments import plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant

ALPHAS = (0.0, 1e-3, 1e-2, 1e-1)

ABLATION = Ablation(
    name='aux_weight',
    title='load-balancing loss weight α (top-1)',
    source='Shazeer et al. 2017 Table 6; Switch Transformer Sec. 2.2',
    base=regime_config.regime_base,
    variants=tuple(Variant(f'alpha{a:g}', {'moe.load_balance_weight': a})
                   for a in ALPHAS),
    comparisons=(
        Comparison('Shazeer T6: a balance loss (α=1e-2) gives a better loss '
                   'than none', ('alpha0.01', 'eval_loss'), ('alpha0', 'eval_loss'),
                   'equal steps, equal FLOPs'),
        Comparison('Shazeer T6: a balance loss (α=1e-2) balances the load '
                   '(MaxVio)', ('alpha0.01', 'eval_max_violation'),
                   ('alpha0', 'eval_max_violation'), 'equal steps, equal FLOPs'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE,
    plot=plots.balance,
)
