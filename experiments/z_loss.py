"""Ablation 5: the router z-loss on and off.

  python -m experiments.run z_loss            # 3 seeds, 6 runs
  python -m experiments.run z_loss --quick

ST-MoE Table 4: the z-loss (c_z = 1e-3) keeps or slightly improves quality
(-1.741 vs -1.755 baseline) and stabilises training by keeping the router
logits small. Logit size is logged as the max |logit| and the mean
logsumexp over tokens, per MoE layer, at every log step and at eval.
"""

from __future__ import annotations

from experiments import plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant

ABLATION = Ablation(
    name='z_loss',
    title='router z-loss on (c_z = 1e-3) and off (top-1)',
    source='ST-MoE Table 4 and Sec. 3.1',
    base=regime_config.regime_base,
    variants=(Variant('z_off', {'moe.z_loss_weight': 0.0}),
              Variant('z_1e-3', {'moe.z_loss_weight': 1e-3})),
    comparisons=(
        Comparison('ST-MoE T4: z-loss gives an equal or better loss',
                   ('z_1e-3', 'eval_loss'), ('z_off', 'eval_loss'),
                   'equal steps, equal FLOPs'),
        Comparison('ST-MoE 3.1: z-loss keeps router logits smaller '
                   '(mean logsumexp)', ('z_1e-3', 'eval_router_logsumexp'),
                   ('z_off', 'eval_router_logsumexp'), 'equal steps, equal FLOPs'),
        Comparison('ST-MoE 3.1: z-loss keeps router logits smaller (max '
                   'absolute logit)',
                   ('z_1e-3', 'eval_router_logit_max'),
                   ('z_off', 'eval_router_logit_max'), 'equal steps, equal FLOPs'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE,
    plot=plots.router_logits,
)
