"""Ablation 4: the number of experts at fixed active parameters per token.

  python -m experiments.run num_experts       # 3 seeds, 18 runs
  python -m experiments.run num_experts --quick

Switch Fig. 4 and Appendix D: more experts help at a fixed FLOPs budget per
token, with diminishing returns, and 2, 4, 8 experts already help. E = 1 is
the dense twin (every FFN dense); each expert keeps width F = 4·D, so active
parameters per token are the same for every E.

Routing groups hold GROUP_SIZE = 512 tokens (4 sequences), so that at E = 32
and train cf 1.25 every expert has C = ceil(512 · 1.25 / 32) = 20 ≥ 16 slots
per group; with one sequence per group (until 2026-12) it had 5, and 10-15%
of the choices were dropped at E ≥ 16. A group of whole sequences keeps
routing causal: a token's slot depends only on tokens before it.
"""

from __future__ import annotations

from experiments import plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant, apply_overrides

EXPERTS = (2, 4, 8, 16, 32)
GROUP_SIZE = 512


def _base(num_steps: int):
  return apply_overrides(regime_config.regime_base(num_steps),
                         {'moe.group_size': GROUP_SIZE})


ABLATION = Ablation(
    name='num_experts',
    title='number of experts E at fixed active parameters (top-1)',
    source='Switch Transformer Fig. 4 and Appendix D',
    base=_base,
    variants=(Variant('e1_dense', {'model.moe_every': 0}),) + tuple(
        Variant(f'e{e}', {'moe.num_experts': e}) for e in EXPERTS),
    comparisons=(
        Comparison('Switch F4: 2 experts beat the dense model',
                   ('e2', 'eval_loss'), ('e1_dense', 'eval_loss'),
                   'equal steps, equal active params'),
        Comparison('Switch F4: 8 experts beat 2', ('e8', 'eval_loss'),
                   ('e2', 'eval_loss'), 'equal steps, equal active params'),
        Comparison('Switch F4: 32 experts beat 8', ('e32', 'eval_loss'),
                   ('e8', 'eval_loss'), 'equal steps, equal active params'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE.replace(
        regime_config.GROUP_NOTE, f'{GROUP_SIZE} tokens (4 sequences) per group'),
    plot=plots.loss_per_expert_count,
)
