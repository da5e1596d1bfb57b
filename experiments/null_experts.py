"""Round 2: top-k with null experts against plain top-k, at equal real-expert
FLOPs.

  python -m experiments.run null_experts --jobs 2   # 3 seeds, 6 runs
  python -m experiments.run null_experts --quick

Both route over the regime's E = 8 real experts of width F = 192 (every
second layer), with the top-k router (softmax over the k chosen outputs):
  top2        top-2, no null experts;
  top4_null8  top-4 over the 8 real plus N = 8 null experts (moe.num_null_
              experts): a choice of a null expert costs nothing and adds
              nothing, gates are renormalised over the real choices
              (AdaMoE), and the balance loss spans all 16 outputs.
At balance a null expert takes a real one's share, so a token makes
K·E/(E+N) = 4·8/16 = 2 real expert passes on average: the same expert FLOPs
as top2 (MoEConfig.expert_passes_per_token; tests/test_experiments_round2.py
checks it with moe_jax/models/accounting.py), and the same capacity per
real expert (C = ceil(K·S·cf/(E+N)) = ceil(2·S·cf/E) = 40 at cf 1.25). The
real passes actually made vary per token and over training:
`experts_per_token` (mean over the second half of training of the logged
experts_per_token_mean, layer mean; 2 for top2, which does not log it) says
how close to 2 they came. The balance loss (α = 1e-2) only steers toward
that share: a --quick run (60 steps) drifted to 2.5, i.e. 25% more real
expert FLOPs than top2, so read the loss claim beside this column; the
second claim tests AdaMoE's own, that null experts cut the real passes.

Sources of the claim (stated before any run):
  * AdaMoE (Zeng et al. 2024, EMNLP Findings, arXiv 2406.13233), abstract:
    null experts "reduce average expert load (FLOPs) while achieving
    superior performance"; fine-tuning Mixtral-8x7B on ARC-C, −14.5% FLOPs
    and +1.69% accuracy.
  * MoE++ (Jin et al. 2024, ICLR 2025, arXiv 2410.07348), abstract: "better
    performance while delivering 1.1–2.1× expert forward throughput
    compared to a vanilla MoE model of the same size" (pre-training, with
    zero, copy and constant experts and gating residuals; here only the
    zero expert).
Both claim better quality at equal or lower real-expert compute.
"""

from __future__ import annotations

from experiments import derived, plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant

TOPK = {'moe.router': 'topk'}

ABLATION = Ablation(
    name='null_experts',
    title='top-4 over 8 real + 8 null experts against top-2, equal real-expert '
          'FLOPs',
    source=('AdaMoE (Zeng et al. 2024, arXiv 2406.13233) abstract; MoE++ '
            '(Jin et al. 2024, arXiv 2410.07348) abstract'),
    base=regime_config.regime_base,
    variants=(
        Variant('top2', {**TOPK, 'moe.top_k': 2}),
        Variant('top4_null8', {**TOPK, 'moe.top_k': 4,
                               'moe.num_null_experts': 8}),
    ),
    comparisons=(
        Comparison('AdaMoE / MoE++: null experts beat plain top-k at equal '
                   'real-expert FLOPs', ('top4_null8', 'eval_loss'),
                   ('top2', 'eval_loss'), 'equal steps, equal FLOPs'),
        Comparison('AdaMoE: null experts make fewer real expert passes than '
                   'top-k (−14.5% FLOPs there)',
                   ('top4_null8', 'experts_per_token'),
                   ('top2', 'experts_per_token'), 'equal steps'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE.replace(
        'top-1 Switch router', 'top-k router') + (
        ' Null experts count as experts in C (E + N outputs), which leaves '
        'each real expert the capacity of top-2 without them. '
        'experts_per_token: real experts per token, mean over the second '
        'half of training (top-2 makes 2; it does not log it).'),
    plot=plots.curve_plots(('experts_per_token_mean',
                            'real experts per token (layer mean)')),
    derived={'experts_per_token': derived.late_mean(
        'experts_per_token_mean', unlogged=2.0)},
)
