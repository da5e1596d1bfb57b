"""Pilot, step 2: does MoE beat its dense twin in the chosen regime?

  python -m experiments.run regime            # 3 seeds, ~25 min on 2 cores
  python -m experiments.run regime --quick    # 2 seeds, 60 steps

The precondition of every MoE paper (Switch Fig. 1 and Table 1): at equal
active parameters per token, the MoE model reaches a lower loss than the
dense model at the same step. switch_top1 and dense have the same active
parameters (one expert of width F = d_ff per token); gshard_top2 runs two
experts per token, so it has more active expert FLOPs than either.
"""

from __future__ import annotations

from experiments import regime_config
from experiments.ablation import Ablation, Comparison, Variant

ABLATION = Ablation(
    name='regime',
    title='MoE against its dense twin at equal active parameters',
    source='Switch Transformer (Fedus et al. 2021) Fig. 1 and Table 1',
    base=regime_config.regime_base,
    variants=(
        Variant('dense', {'model.moe_every': 0}),
        Variant('switch_top1', {}),
        Variant('gshard_top2', {'moe.router': 'gshard', 'moe.top_k': 2}),
    ),
    comparisons=(
        Comparison('switch top-1 beats its dense twin (equal active params)',
                   ('switch_top1', 'eval_loss'), ('dense', 'eval_loss'),
                   'equal steps, equal active params'),
        Comparison('gshard top-2 beats the dense model',
                   ('gshard_top2', 'eval_loss'), ('dense', 'eval_loss'),
                   'equal steps'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE,
)
