"""Round 2: ReLU routing (ReMoE) against top-k at a matched average k.

  python -m experiments.run remoe --jobs 2   # 3 seeds, 6 runs
  python -m experiments.run remoe --quick

The regime's MoE (E = 8 experts of width F = 192 in every second layer),
routed two ways, both dropless as in the paper's Megatron runs (no capacity
factor), so that neither loses tokens to capacity:
  topk   Switch top-1: softmax over the 8 experts, the top one taken with its
         probability as the gate (ReMoE's TopK baseline: Megatron with
         --moe-router-pre-softmax, top-1, aux loss 1e-2; thu-ml/ReMoE
         scripts/train_llama_182m_moe.sh), α = 1e-2;
  remoe  ReLU gates, every expert with a positive gate taken, and the L1
         penalty whose weight λ moves ×1.2^±1 per step toward an average of
         k = 1 expert per token (moe_jax/core/routing/relu.py; λ0 = 1e-8, as
         the reference code), α = 0: the paper's load-balanced L1 is its
         only balance term.
Both keep the regime's z-loss (c_z = 1e-3). The basis is equal steps and
equal FLOPs on average once λ has grown: the ReLU router's experts per
token vary from token to token and over training. λ starts at 1e-8 and
grows at most ×1.2 per step, so the first hundred-odd steps route nearly
densely (the paper's "stage I"; a --quick run of 60 steps measured 6.2 of 8
experts per token). `experts_per_token` (the mean over the second half of
training of the logged experts_per_token_mean, layer mean) says how close
to 1 it came, `experts_per_token_all` the same over the whole run, i.e. the
expert FLOPs actually spent against top-1's. For topk both are 1 by
construction (it does not log them).

Source of the claim (stated before any run): Wang, Zhu and Chen, "ReMoE:
Fully Differentiable Mixture-of-Experts with ReLU Routing", ICLR 2025
(arXiv 2412.14711), abstract: "ReMoE consistently outperforms vanilla
TopK-routed MoE across various model sizes, expert counts, and levels of
granularity" (LLaMA models of 182M to 978M active parameters on the Pile,
E = 8, k = 1 in the main comparison). The paper's loss numbers could not be
read through the search tool; shared/docs/MOE_REFERENCE.md quotes its
182M TopK MoE at 1.936 against 2.042 dense, not ReMoE's own value.
"""

from __future__ import annotations

from experiments import derived, plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant

DROPLESS = {'moe.dispatcher': 'dropless'}

ABLATION = Ablation(
    name='remoe',
    title='ReLU routing (ReMoE) against top-1 routing at an average of one '
          'expert per token',
    source='ReMoE (Wang, Zhu, Chen, ICLR 2025, arXiv 2412.14711), abstract',
    base=regime_config.regime_base,
    variants=(
        Variant('topk', DROPLESS),
        Variant('remoe', {**DROPLESS, 'moe.router': 'relu',
                          'moe.load_balance_weight': 0.0}),
    ),
    comparisons=(
        Comparison('ReMoE: ReLU routing beats top-k routing at the same '
                   'average experts per token', ('remoe', 'eval_loss'),
                   ('topk', 'eval_loss'), 'equal steps, equal FLOPs'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=('Both variants dropless (no capacity). ' +
           regime_config.CAPACITY_NOTE.split('; train cf')[0].replace(
               'Capacity convention: per choice, C = ceil(K·S·cf/E) with ',
               'Routing groups: ') +
           '. Model: D = 48, 4 layers, 4 heads, d_ff = F = 192, E = 8 in '
           'every second FFN; c_z = 1e-3; AdamW 3e-3 with 50 warmup steps '
           'and cosine decay. experts_per_token: the mean over the second '
           'half of training of the logged experts per token (top-1: 1, '
           'not logged); experts_per_token_all: the same over every step.'),
    plot=plots.curve_plots(('experts_per_token_mean',
                            'experts per token (ReLU router, layer mean)')),
    derived={'experts_per_token': derived.late_mean(
                 'experts_per_token_mean', unlogged=1.0),
             'experts_per_token_all': derived.late_mean(
                 'experts_per_token_mean', start=0.0, unlogged=1.0)},
)
