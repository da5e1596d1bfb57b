"""Pilot, step 1: choose the width and length of every ablation by a rule.

  python -m experiments.run regime_scan --seeds 1

The rule, fixed before any run (issue 8, step 1):
  1. Budget. Every ablation must rerun in <= 60 min on 2 cores; the largest
     has 21 runs, so its slowest variant (GShard top-2 at train capacity
     factor 2.0) gets 150 s of training per run. At each candidate width D
     (4 layers, d_ff = 4·D, E = 8, every second FFN an MoE layer), N(D) is
     the steps that variant trains in 150 s at the tokens/s measured by
     `python -m experiments.throughput`, rounded down to a hundred:
     D = 32 -> 1300, D = 48 -> 1000, D = 64 -> 800 (18,041 / 14,889 / 11,775
     tokens/s on the 2-core CPU, 2026-11-28).
  2. Convergence. Train the dense twin at each D for N(D) and N(D)/2 steps
     (separate runs, each with its full warmup + cosine schedule). The
     relative fall (loss(N/2) - loss(N)) / loss(N) must be <= 1%: past the
     point of steep returns, where a dense model is limited by its size and
     extra (expert) parameters can help. Take the largest D that qualifies;
     if none does, the D with the smallest fall, and say so.
  Data: the embedded stdlib corpus (8 MB, 7.6 MB for training), so that at
  most 1300 x 2048 = 2.7M bytes are read: less than one epoch, no repeat.

This ablation has no claims; its summary reports the fall per D.
"""

from __future__ import annotations

from experiments import regime_config
from experiments.ablation import Ablation, Variant

STEPS = {32: 1300, 48: 1000, 64: 800}


def _scan_variants():
  for d, n in STEPS.items():
    for label, steps in (('full', n), ('half', n // 2)):
      yield Variant(f'dense_d{d}_{label}',
                    {**regime_config.size_overrides(d, steps),
                     'model.moe_every': 0})


def plot(ab, rows, curves, out):
  """Relative fall per doubling against D, and the 1% threshold."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from experiments.report import values  # pylint: disable=g-import-not-at-top
  widths, falls = [], []
  for d in STEPS:
    full = values(rows, f'dense_d{d}_full', 'eval_loss')
    half = values(rows, f'dense_d{d}_half', 'eval_loss')
    if full and half:
      widths.append(d)
      falls.append(100 * (sum(half) / len(half) - sum(full) / len(full)) /
                   (sum(full) / len(full)))
  if not widths:
    return []
  fig, ax = plt.subplots(figsize=(5, 3.5))
  ax.plot(widths, falls, 'o-', label='dense: loss(N/2) → loss(N)')
  ax.axhline(1.0, color='k', ls='--', lw=1, label='1% rule')
  ax.set_xlabel('width D (N = 1300 / 1000 / 800 steps)')
  ax.set_ylabel('relative fall per doubling (%)')
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out / 'fall_per_doubling.png', dpi=110)
  plt.close(fig)
  lines = [f'D={d}: {f:.2f}%' for d, f in zip(widths, falls)]
  lines.append(outcome(widths, falls))
  (out / 'fall_per_doubling.txt').write_text('\n'.join(lines) + '\n')
  return ['fall_per_doubling.png']


def outcome(widths: list[int], falls: list[float]) -> str:
  """The rule's step 2 applied to the measured falls (percent per doubling):
  the largest D within 1%, else the D with the smallest fall."""
  met = [d for d, f in zip(widths, falls) if f <= 1.0]
  if met:
    return f'Outcome: D = {max(met)} is the largest width within the 1% rule.'
  best = min(zip(falls, widths))
  return (f'Outcome: no width meets the 1% rule (falls {min(falls):.1f}% to '
          f'{max(falls):.1f}% per doubling); the fallback picks D = {best[1]}, '
          'the smallest fall.')


ABLATION = Ablation(
    name='regime_scan',
    title='which width and length the ablations train at',
    source='the rule in experiments/regime_scan.py (issue 8, step 1)',
    base=lambda steps: regime_config.base_config(32, steps),
    variants=tuple(_scan_variants()),
    comparisons=(),
    steps=1300,
    quick_steps=40,
    notes=('Each variant fixes its own width and steps, so --steps and '
           '--quick do not shorten this scan. The fall per doubling is in '
           'fall_per_doubling.txt and the plot below; its last line is the '
           'rule\'s outcome, computed from these runs. The ablations train at '
           f'D = {regime_config.REGIME_D} for {regime_config.REGIME_STEPS} '
           'steps (experiments/regime_config.py), the outcome on the runs of '
           '2026-11 (results_2026-11/regime_scan).'),
    plot=plot,
)
