"""Round 2: load balancing by aux loss, by the sign-rule bias, or by QB.

  python -m experiments.run balancing --jobs 2   # 3 seeds, 9 runs
  python -m experiments.run balancing --quick

Three ways to balance the same top-2 sigmoid router (DeepSeek-V3's scores,
gates renormalised over the chosen pair; E = 8, width F = 192):
  aux       the Switch balance loss, α = 1e-2 (the regime's);
  sign      loss-free balancing (Wang et al. 2024): a selection bias moved
            by ±γ = 1e-3 after each step from the step's expert loads, α = 0;
  quantile  quantile balancing (QB: J. Su, kexue.fm/archives/11619; merged
            in Megatron-LM PR #5349 and torchtitan PR #4577): the bias solved
            after each step so that every expert would take T·K/E of the
            batch's choices (moe_jax/core/routing/quantile_balance.py), α = 0.

What is measured, besides the validation loss: MaxVio = max_e load_e /
mean_e load_e − 1 over each training step's whole batch (16 × 128 tokens,
the global batch, before capacity), logged every step here
(train.log_every = 1), as its mean over the second half of training
(`maxvio_train`) and its step-to-step volatility, the mean |MaxVio_t −
MaxVio_{t−1}| over the same steps (`maxvio_volatility`,
experiments/derived.py). The sign rule moves every bias by γ every step
whatever the imbalance, so its MaxVio should jitter; QB's solve aims at
balance each step.

Sources of the claims (stated before any run):
  * Wang et al. 2024, "Auxiliary-Loss-Free Load Balancing Strategy for
    Mixture-of-Experts" (arXiv 2408.15664), main results: far lower
    MaxVio_global than the aux-loss baseline (0.04 against 0.72 for their
    1B model) at an equal or better perplexity (numbers as quoted in
    shared/docs/MOE_REFERENCE.md; the table itself could not be read
    through the search tool).
  * QB: Su's derivation (kexue.fm/archives/11619: "a more accurate and
    hyperparameter-free update" than the sign rule) and Marin's 32B-A5B run
    (openathena.ai/blog/quantile-balancing: "zero loss spikes", and "this
    outperforms our prior fixed-increment-bias + aux-loss setup at 1e21").
    Neither states a MaxVio number we could find; a small-scale report
    (jonathanc.net/blog/causal-routing-bias.html) found that with QB
    "max_vio still had pretty large step-to-step swings", so the volatility
    claim is the one most at risk.
"""

from __future__ import annotations

from experiments import derived, plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant, apply_overrides

SIGMOID = {'moe.router': 'sigmoid', 'moe.top_k': 2}
NO_AUX = {**SIGMOID, 'moe.load_balance_weight': 0.0}
SAME = 'equal steps, equal FLOPs'


def _base(num_steps: int):
  # Every step's MaxVio, so that step-to-step volatility is step to step.
  return apply_overrides(regime_config.regime_base(num_steps),
                         {'train.log_every': 1})


def _claim(text, better, worse, column):
  return Comparison(text, (better, column), (worse, column), SAME)


ABLATION = Ablation(
    name='balancing',
    title='balance loss, loss-free sign-rule bias, and quantile balancing '
          '(top-2 sigmoid router)',
    source=('Wang et al. 2024 (loss-free balancing, arXiv 2408.15664); '
            'quantile balancing (QB): Su, kexue.fm/archives/11619, Megatron-LM '
            'PR #5349, Marin (openathena.ai/blog/quantile-balancing)'),
    base=_base,
    variants=(
        Variant('aux', SIGMOID),
        Variant('sign', {
            **NO_AUX, 'moe.router_options.sigmoid.bias_update_rate': 1e-3}),
        Variant('quantile', {
            **NO_AUX, 'moe.router_options.sigmoid.bias_update': 'quantile'}),
    ),
    comparisons=(
        _claim('Wang 2024: the sign-rule bias balances better than the aux '
               'loss (training MaxVio, 0.04 vs 0.72 there)', 'sign', 'aux',
               'maxvio_train'),
        _claim('Wang 2024: the sign-rule bias gives an equal or better loss '
               'than the aux loss', 'sign', 'aux', 'eval_loss'),
        _claim('Su / Megatron QB: quantile balancing balances better than '
               'the sign rule (training MaxVio)', 'quantile', 'sign',
               'maxvio_train'),
        _claim('Su / Megatron QB: quantile balancing moves MaxVio less from '
               'step to step than the sign rule', 'quantile', 'sign',
               'maxvio_volatility'),
        _claim('Marin 2026: quantile balancing gives a better loss than the '
               'aux loss', 'quantile', 'aux', 'eval_loss'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE.replace(
        'top-1 Switch router, α = 1e-2', 'top-2 sigmoid router (α = 1e-2 '
        'for aux only)') + (
        ' maxvio_train: the mean, over the steps of the second half of '
        'training, of each step\'s MaxVio over its whole batch (mean over '
        'the MoE layers); maxvio_volatility: the mean |MaxVio_t − '
        'MaxVio_{t−1}| over those steps. Training is logged every step.'),
    plot=plots.curve_plots(('max_violation',
                            'training MaxVio (whole batch, layer mean)')),
    derived={'maxvio_train': derived.late_mean('max_violation'),
             'maxvio_volatility': derived.step_volatility('max_violation')},
)
