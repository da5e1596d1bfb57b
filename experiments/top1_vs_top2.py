"""Ablation 1: top-1 (Switch) against top-2 (GShard) at three capacity factors.

  python -m experiments.run top1_vs_top2 --jobs 2   # 3 seeds, 24 runs
  python -m experiments.run top1_vs_top2 --quick

Switch Table 1 found top-1 ahead at capacity factor 1.0 and 1.25 and top-2
ahead only at 2.0, with top-1 faster per step; ST-MoE Table 8 found top-2
slightly ahead at every train capacity factor. The capacity convention is
Switch's (C = round(S·cf/E), not scaled by K), the one the Switch claim was
made under, so top-2 at cf 1.0 has room for at most half its second
choices. Each run evaluates at its own train capacity factor. Two more
bases than equal steps: equal training time (Switch Table 1's own basis;
the loss on each validation curve at the faster run's training seconds), and
equal FLOPs (top-2 with experts of half the width).
"""

from __future__ import annotations

from experiments import plots, regime_config
from experiments.ablation import Ablation, Comparison, Variant

CFS = (1.0, 1.25, 2.0)


def _routed(k: int, cf: float) -> dict:
  return {'moe.router': 'switch' if k == 1 else 'gshard', 'moe.top_k': k,
          'moe.capacity_factor': cf, 'moe.eval_capacity_factor': cf,
          'moe.capacity_scales_with_k': False}


def _variants():
  yield Variant('dense', {'model.moe_every': 0})
  for k in (1, 2):
    for cf in CFS:
      yield Variant(f'top{k}_cf{cf}', _routed(k, cf))
  # Top-2 with experts half as wide as top-1's: the same expert FLOPs per
  # token (2 × F/2 = 1 × F), half the expert parameters.
  yield Variant('top2_halfwidth_cf1.25', {
      **_routed(2, 1.25), 'moe.d_ff': 2 * regime_config.REGIME_D})


def _comparisons():
  for cf in (1.0, 1.25):
    yield Comparison(f'Switch T1: top-1 beats top-2 at cf {cf}',
                     (f'top1_cf{cf}', 'eval_loss'), (f'top2_cf{cf}', 'eval_loss'),
                     'equal steps')
  yield Comparison('Switch T1: top-2 beats top-1 at cf 2.0',
                   ('top2_cf2.0', 'eval_loss'), ('top1_cf2.0', 'eval_loss'),
                   'equal steps')
  yield Comparison('ST-MoE T8: top-2 beats top-1 at cf 1.25',
                   ('top2_cf1.25', 'eval_loss'), ('top1_cf1.25', 'eval_loss'),
                   'equal steps')
  yield Comparison('Switch T1: top-1 beats top-2 in equal training time '
                   '(cf 1.25)', ('top1_cf1.25', 'eval_loss'),
                   ('top2_cf1.25', 'eval_loss'), 'equal time')
  yield Comparison('Switch T1: top-1 beats top-2 at equal expert FLOPs '
                   '(top-2 at half expert width, cf 1.25)',
                   ('top1_cf1.25', 'eval_loss'),
                   ('top2_halfwidth_cf1.25', 'eval_loss'),
                   'equal steps, equal FLOPs')
  yield Comparison('Switch T1: top-1 takes less time per step (train CPU s)',
                   ('top1_cf1.25', 'train_cpu_s'), ('top2_cf1.25', 'train_cpu_s'),
                   'equal steps')


ABLATION = Ablation(
    name='top1_vs_top2',
    title='top-1 against top-2 routing at train capacity factor 1.0 / 1.25 / 2.0',
    source='Switch Transformer Table 1; ST-MoE Table 8',
    base=regime_config.regime_base,
    variants=tuple(_variants()),
    comparisons=tuple(_comparisons()),
    steps=regime_config.REGIME_STEPS,
    quick_steps=60,
    notes=('Capacity convention: Switch\'s, C = round(S·cf/E) with S = '
           f'{regime_config.GROUP_NOTE}, not scaled by K, '
           'min 4; eval at the train cf. "train CPU s" is the steps times the '
           'measured process CPU seconds per step (compilation and evaluation '
           'excluded; each run is single-threaded, so other jobs on the '
           'machine do not inflate it; the rows\' cpu_share says how much of '
           'a core each run got); the per-second plot and the equal-time '
           'claim use it.'),
    plot=plots.loss_per_second,
)
