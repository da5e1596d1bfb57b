"""Ablation 6: routing schemes side by side (the router zoo).

  python -m experiments.run routing_schemes        # 3 seeds, 18 runs
  python -m experiments.run routing_schemes --quick

Every variant spends about two experts of width F = 192 per token:
  top2                 GShard top-2, the token-choice baseline (as in regime);
  expert_choice        experts pick tokens, capacity factor 2 (Zhou et al.
                       2022's equal-compute match to top-2), causal-safe mode,
                       no balance loss;
  sigmoid_aux          sigmoid gating, top-2, α = 1e-2 balance loss;
  sigmoid_loss_free    sigmoid gating, top-2, no balance loss, selection bias
                       moved by γ = 1e-3 per step (Wang et al. 2024);
  fine_grained_shared  each expert split in 4 (E = 30 routed of width 48,
                       K = 6) plus 2 always-on shared experts: the same total
                       and active expert parameters as top2 (DeepSeekMoE);
  soft                 Soft MoE (Puigcerver et al. 2023), P = 4 slots per
                       expert per chunk of Q = 16 positions: E·P/Q = 2
                       expert passes per token, as top2; causal by a
                       one-chunk delay (moe_jax/core/routing/soft.py).
"""

from __future__ import annotations

import ml_collections

from experiments import regime_config
from experiments.ablation import Ablation, Comparison, Variant
from moe_jax.config.fine_grained import split_experts

TOP2 = {'moe.router': 'gshard', 'moe.top_k': 2}


def _fine_grained() -> dict:
  moe = ml_collections.ConfigDict(regime_config.regime_base(1).moe.to_dict())
  moe.router, moe.top_k = 'gshard', 2
  split_experts(moe, 4, num_shared=2)
  return {f'moe.{k}': moe[k] for k in ('router', 'num_experts', 'top_k',
                                       'd_ff', 'num_shared_experts')}


ABLATION = Ablation(
    name='routing_schemes',
    title='token choice, expert choice, loss-free balancing, shared + '
          'fine-grained experts',
    source=('Zhou et al. 2022 (expert choice); Wang et al. 2024 (loss-free '
            'balancing); DeepSeekMoE (Dai et al. 2024) Table 1'),
    base=regime_config.regime_base,
    variants=(
        Variant('top2', TOP2),
        Variant('expert_choice', {
            'moe.router': 'expert_choice', 'moe.capacity_factor': 2.0,
            'moe.eval_capacity_factor': 2.0, 'moe.load_balance_weight': 0.0}),
        Variant('sigmoid_aux', {'moe.router': 'sigmoid', 'moe.top_k': 2}),
        Variant('sigmoid_loss_free', {
            'moe.router': 'sigmoid', 'moe.top_k': 2,
            'moe.router_options.sigmoid.bias_update_rate': 1e-3,
            'moe.load_balance_weight': 0.0}),
        Variant('fine_grained_shared', _fine_grained()),
        Variant('soft', {
            'moe.router': 'soft', 'moe.router_options.soft.slots_per_expert': 4,
            'moe.load_balance_weight': 0.0, 'moe.z_loss_weight': 0.0}),
    ),
    comparisons=(
        Comparison('Zhou 2022: expert choice beats top-2 at equal compute',
                   ('expert_choice', 'eval_loss'), ('top2', 'eval_loss'),
                   'equal steps, equal FLOPs'),
        Comparison('Wang 2024: loss-free balancing has a lower MaxVio than '
                   'the aux loss', ('sigmoid_loss_free', 'eval_max_violation'),
                   ('sigmoid_aux', 'eval_max_violation'),
                   'equal steps, equal FLOPs'),
        Comparison('Wang 2024: loss-free balancing gives an equal or better '
                   'loss', ('sigmoid_loss_free', 'eval_loss'),
                   ('sigmoid_aux', 'eval_loss'), 'equal steps, equal FLOPs'),
        Comparison('DeepSeekMoE T1: shared + fine-grained experts beat GShard '
                   'top-2 at equal size', ('fine_grained_shared', 'eval_loss'),
                   ('top2', 'eval_loss'), 'equal total params'),
        Comparison('Puigcerver 2023: Soft MoE beats token-choice routing at '
                   'equal compute (shown for ViT encoders)',
                   ('soft', 'eval_loss'), ('top2', 'eval_loss'),
                   'equal steps, equal FLOPs'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE + (
        ' Expert choice uses its causal-safe mode (chunks of 16 positions; '
        'see moe_jax/core/routing/expert_choice.py). Soft MoE was made for '
        'encoders; '
        'in this decoder it is causal by a one-chunk delay, so a token reaches '
        'the experts only through the next chunk\'s slots.'),
)
