"""Ablation 7: sparse upcycling against continuing the dense model.

  python -m experiments.run upcycling          # 3 seeds: 3 dense starts, 6 runs
  python -m experiments.run upcycling --quick

Komatsuzaki et al. 2022 ("Sparse Upcycling: Training Mixture-of-Experts from
Dense Checkpoints", ICLR 2023, arXiv:2212.05055; abstract and Fig. 1): an MoE
initialised from a dense checkpoint (each MLP copied into every expert, the
router new, everything else copied) beats continuing the dense model for the
same extra training.

Per seed, the runner first trains the dense twin for N steps (the init_run,
`dense_start`); both variants then start from its final parameters and train
N more steps: `dense_continued` as the same dense model, `upcycled` as
switch_top1's shape with every second FFN upcycled into E = 8 experts.
"""

from __future__ import annotations

from experiments import regime_config
from experiments.ablation import Ablation, Comparison, Variant

DENSE = {'model.moe_every': 0}

ABLATION = Ablation(
    name='upcycling',
    title='an upcycled MoE against the dense model it came from, trained on '
          'for the same steps',
    source='Sparse Upcycling (Komatsuzaki et al. 2022), abstract and Fig. 1',
    base=regime_config.regime_base,
    init_run=Variant('dense_start', DENSE),
    variants=(
        Variant('dense_continued', DENSE),
        # Top-2 with gates renormalised over the chosen pair: the upcycled
        # model starts as the dense model's function (up to dropped tokens;
        # cf 2.0 keeps drops rare while the router is untrained).
        Variant('upcycled', {
            'train.upcycle': True, 'moe.router': 'topk', 'moe.top_k': 2,
            'moe.capacity_factor': 2.0}),
    ),
    comparisons=(
        Comparison('Sparse Upcycling: the upcycled MoE beats the dense model '
                   'trained on for the same steps',
                   ('upcycled', 'eval_loss'), ('dense_continued', 'eval_loss'),
                   'equal steps'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=('Both variants start from the same dense checkpoint (the '
           '`dense_start` run of their seed, N steps) and train N more steps '
           'with fresh AdamW state and a new warmup + cosine schedule; the '
           'paper optionally copied the optimizer state too. The upcycled '
           'model has E = 8 experts of width F = d_ff in every second layer, '
           'top-2 (twice the dense FFN\'s active FLOPs in those layers), '
           'train cf 2.0, eval cf 2.0. ' + regime_config.CAPACITY_NOTE),
)
