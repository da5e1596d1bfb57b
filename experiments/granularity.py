"""Round 2: expert granularity G at equal active and total parameters.

  python -m experiments.run granularity --jobs 2   # 3 seeds, 12 runs
  python -m experiments.run granularity --quick

G ∈ {1, 2, 4, 8}: each of the regime's E = 8 experts of width F = 192 split
into G experts of width F/G, and top-K·G of the E·G taken
(moe_jax/config/fine_grained.py's split_experts, no shared experts). The
expert parameters, total and active per token, are the same at every G;
only the router grows, from D·8 to D·8·G weights
(tests/test_experiments_round2.py checks both with
moe_jax/models/accounting.py). Every G uses the top-k router without
renormalisation (softmax over all E·G experts, the chosen K·G probabilities
as gates), so that G = 1 is the regime's Switch top-1 gate. The capacity
per expert, C = ceil(K·G·S·cf/(E·G)) = 20 at cf 1.25, is the same share of
each expert's tokens at every G.

Finer experts cost more per token on this CPU (a larger router, more and
smaller matmuls, a larger dispatch): `cpu_us_per_token` (training CPU µs per
token, experts/derived.py) stands beside the loss, and the loss per second
plot draws the loss against training CPU seconds.

Sources of the claims (stated before any run):
  * Krajewski et al. 2024, "Scaling Laws for Fine-Grained Mixture of
    Experts" (arXiv 2402.07871), abstract: "the common practice of setting
    the size of experts in MoE to mirror the feed-forward layer is not
    optimal at almost any computational budget"; their compute budget is in
    FLOPs.
  * ReMoE's granularity sweep (182M, E = 8, top-1 base), as quoted in
    shared/docs/MOE_REFERENCE.md: G = 1 → 2 → 4 → 64 gave 1.936 → 1.912 →
    1.899 → 1.885, each finer step better.
"""

from __future__ import annotations

import ml_collections

from experiments import derived, plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant
from moe_jax.config.fine_grained import split_experts

GRANULARITIES = (1, 2, 4, 8)
SAME_SIZE = 'equal steps, equal active and total params'


def granular(g: int) -> dict:
  """The overrides of granularity g (dotted moe fields)."""
  moe = ml_collections.ConfigDict(regime_config.regime_base(1).moe.to_dict())
  moe.router = 'topk'
  split_experts(moe, g)
  return {'moe.router': 'topk', 'moe.router_options.topk.renormalize': False,
          **{f'moe.{k}': moe[k] for k in ('num_experts', 'top_k', 'd_ff')}}


def _comparisons():
  for fine, coarse in zip(GRANULARITIES[1:], GRANULARITIES):
    yield Comparison(f'Krajewski 2024 / ReMoE sweep: G = {fine} beats '
                     f'G = {coarse}', (f'g{fine}', 'eval_loss'),
                     (f'g{coarse}', 'eval_loss'), SAME_SIZE)
  yield Comparison('Krajewski 2024: G = 4 beats G = 1 at equal compute '
                   '(their FLOPs; here training CPU time, overheads '
                   'included)', ('g4', 'eval_loss'), ('g1', 'eval_loss'),
                   'equal time')


ABLATION = Ablation(
    name='granularity',
    title='expert granularity G = 1, 2, 4, 8 (E·G experts of width F/G, '
          'top-G), equal active and total parameters',
    source=('Krajewski et al. 2024 (arXiv 2402.07871) abstract; ReMoE\'s '
            'granularity sweep (via MOE_REFERENCE.md)'),
    base=regime_config.regime_base,
    variants=tuple(Variant(f'g{g}', granular(g)) for g in GRANULARITIES),
    comparisons=tuple(_comparisons()),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=regime_config.CAPACITY_NOTE.replace(
        'top-1 Switch router', 'top-K·G router without renormalisation '
        '(G = 1: Switch\'s gate)') + (
        ' cpu_us_per_token: training CPU microseconds per token (the '
        'measured process CPU seconds per step over 16 × 128 tokens; each '
        'run single-threaded).'),
    plot=plots.loss_per_second,
    derived={'cpu_us_per_token': derived.cpu_us_per_token},
)
