"""Round 2: a tight eval capacity on domain-sorted against shuffled eval
batches.

  python -m experiments.run eval_sorting --jobs 2   # after balance_scope
  python -m experiments.run eval_sorting --quick

No training of its own: its two variants are balance_scope's `global` and
`sequence` runs, config for config, so the runner reuses their finished
checkpoints (experiments/records.py find_finished) and only evaluates them.
Each checkpoint is scored at eval capacity factor 1.1 with one capacity per
batch of 16 × 128 tokens (moe.group_size = 2048 at evaluation; the runs
trained with one group per sequence), on the same validation windows of the
labelled mix batched two ways (moe_jax/analysis/capacity.py
domain_ordered_batches): sorted by domain, so most batches hold one domain,
and shuffled. Dropless, the order changes nothing, so the dropless loss of
the same windows is the reference (experiments/derived.py sorted_eval).
With the trained grouping, one sequence per group, the order could not
matter, which is why the capacity here spans the batch.

Source of the claims (stated before any run): Marin, "Measure tagged eval
shuffle under expert capacity" (github marin-community/marin issue #8134):
at a fixed all-to-all capacity of 1.1, domain-ordered tagged evaluation
inflated the eval loss over dropless by 0.1102, deterministic shuffling by
0.0497; dropless, the two agreed to 3.86e-5. Their capacity cells are per
expert-parallel rank of a v5p-8 (EP4); ours is per batch on one device.
`global` specialises its experts by domain more than `sequence` in the
--quick runs of balance_scope, so its sorted batches may overflow more;
that is an observation to report, not a claim.
"""

from __future__ import annotations

from experiments import balance_scope, derived, regime_config
from experiments.ablation import Ablation, Comparison, Variant

FACTOR = 1.1  # Marin's capacity.
METRICS = derived.sorted_eval(FACTOR)
SORTED, SHUFFLED = (f'eval_loss_{o}_cf{FACTOR:g}' for o in ('sorted',
                                                            'shuffled'))
VARIANTS = ('global', 'sequence')


ABLATION = Ablation(
    name='eval_sorting',
    title='eval capacity factor 1.1 on domain-sorted vs shuffled eval '
          'batches (balance_scope\'s checkpoints)',
    source='Marin, github marin-community/marin issue #8134',
    base=balance_scope.ABLATION.base,
    variants=tuple(balance_scope.ABLATION.variant(v) for v in VARIANTS),
    comparisons=tuple(
        Comparison(f'Marin #8134: at a tight eval capacity, shuffled eval '
                   f'batches lose less than domain-sorted ones ({v} scope)',
                   (v, SHUFFLED), (v, SORTED), 'same checkpoint')
        for v in VARIANTS),
    steps=balance_scope.ABLATION.steps,
    quick_steps=balance_scope.ABLATION.quick_steps,
    notes=regime_config.CAPACITY_NOTE + balance_scope.DATA_NOTE + (
        f' Eval: capacity factor {FACTOR:g} per batch of 2048 tokens '
        '(moe.group_size at evaluation), train.eval_batches batches of the '
        'same windows sorted by domain or shuffled; sorted_penalty = sorted '
        'minus shuffled loss; eval_loss_dropless: the same windows with no '
        'capacity.'),
    checkpoint_metrics=METRICS,
    prepare=balance_scope.ABLATION.prepare,
)
