"""Round 2: Drop-Upcycling, re-initialising a fraction r of each expert.

  python -m experiments.run drop_upcycling --jobs 2   # 3 seeds: 3 dense starts, 9 runs
  python -m experiments.run drop_upcycling --quick

As experiments/upcycling.py: per seed the runner first trains the dense twin
for N steps (the init_run, `dense_start`); every variant starts from its
final parameters and trains N more steps as switch_top1's shape with every
second FFN upcycled into E = 8 experts (top-2, gates renormalised over the
chosen pair, train cf 2.0). The variants differ only in r,
train.upcycle_drop_fraction (moe_jax/train/drop_upcycle.py): after the copy
each expert re-draws ⌊r·F⌋ of its F = 192 hidden units (columns of wi, rows
of wo) from a normal with the dense weights' mean and std there.
  r0    naive upcycling (the upcycling ablation's `upcycled`);
  r0.5  the paper's recommended ratio;
  r1.0  every expert re-drawn, keeping only the dense weights' statistics.

Sources of the claims (stated before any run): Nakamura et al. 2025,
"Drop-Upcycling: Training Sparse Mixture of Experts with Partial
Re-initialization" (ICLR 2025, arXiv 2502.19261), Fig. 3 (learning curves of
the MoE construction methods): "Drop-Upcycling with r = 0.5 achieves the
best performance, gaining initial knowledge transfer while avoiding
convergence slowdown"; the abstract: naive upcycling "leads to initial
performance gains" but "the training progresses slower than when trained
from scratch". Their runs are hundreds of billions of tokens; these are 2M
bytes after the dense start, so the late crossing the paper shows may not
come within N steps. Their reference code (Taishi-N324/Drop-Upcycling,
conversions/drop_upcycling.py) was read to match the re-draw; it draws a
separate index set per weight, where the paper (and drop_upcycle.py, which
says why) uses one per expert.
"""

from __future__ import annotations

from experiments import derived, regime_config
from experiments.ablation import Ablation, Comparison, Variant

DENSE = {'model.moe_every': 0}
UPCYCLED = {'train.upcycle': True, 'moe.router': 'topk', 'moe.top_k': 2,
            'moe.capacity_factor': 2.0}
FRACTIONS = (0.0, 0.5, 1.0)
# The first validation point of the curve (train.eval_every = N/8).
EARLY = 1 / 8


def _variant(r: float) -> Variant:
  # r = 0 keeps the field at its default, so that the run hashes as the
  # upcycling ablation's `upcycled` and can be reused from there.
  extra = {'train.upcycle_drop_fraction': r} if r else {}
  return Variant(f'r{r:g}', {**UPCYCLED, **extra})


ABLATION = Ablation(
    name='drop_upcycling',
    title='Drop-Upcycling: upcycled MoEs with r = 0, 0.5, 1.0 of each '
          'expert re-drawn',
    source=('Drop-Upcycling (Nakamura et al., ICLR 2025, arXiv 2502.19261), '
            'abstract and Fig. 3'),
    base=regime_config.regime_base,
    init_run=Variant('dense_start', DENSE),
    variants=tuple(_variant(r) for r in FRACTIONS),
    comparisons=(
        Comparison('Nakamura 2025 Fig. 3: r = 0.5 beats naive upcycling by '
                   'the end', ('r0.5', 'eval_loss'), ('r0', 'eval_loss'),
                   'equal steps'),
        Comparison('Nakamura 2025 abstract, Fig. 3: naive upcycling leads '
                   'early (validation loss at N/8 steps)',
                   ('r0', 'eval_loss_early'), ('r0.5', 'eval_loss_early'),
                   'equal steps'),
        Comparison('Nakamura 2025 Fig. 3: r = 0.5 beats r = 1.0',
                   ('r0.5', 'eval_loss'), ('r1', 'eval_loss'), 'equal steps'),
    ),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=('Every variant starts from the same dense checkpoint (the '
           '`dense_start` run of its seed, N steps) and trains N more steps '
           'with fresh AdamW state and a new warmup + cosine schedule. '
           'eval_loss_early: the validation loss (on train.eval_batches '
           'batches) at the curve point nearest N/8 steps. ' +
           regime_config.CAPACITY_NOTE.replace(
               'train cf 1.25, eval cf 2.0', 'train and eval cf 2.0')),
    derived={'eval_loss_early': derived.at_fraction('eval_loss', EARLY)},
)
