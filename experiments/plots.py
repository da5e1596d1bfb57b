"""Each ablation's own figure: (ablation, rows, curves, out) -> [png names]."""

from __future__ import annotations

import json

import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments.report import plot_curves, values


def _save(fig, out, name: str) -> list[str]:
  fig.tight_layout()
  fig.savefig(out / name, dpi=110)
  plt.close(fig)
  return [name]


def loss_per_second(ab, rows, curves, out) -> list[str]:
  """Validation loss against training seconds: quality per unit time."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  # CPU time where any run recorded it. A variant without it (rows reused
  # from runs that predate CPU timing, e.g. top1_vs_top2's dense ones) is
  # left out and named, rather than sending every curve to wall time, which
  # other jobs inflate.
  column = ('train_cpu_s' if any(values(rows, v.name, 'train_cpu_s')
                                 for v in ab.variants) else 'train_s')
  left_out = []
  for v in ab.variants:
    sec = values(rows, v.name, column)
    steps = values(rows, v.name, 'steps')
    pts = [c for c in curves if c['variant'] == v.name
           and c['metric'] == 'eval_loss']
    if not pts:
      continue
    if not sec:
      left_out.append(v.name)
      continue
    per_step = np.mean(sec) / np.mean(steps)
    xs = sorted({int(c['step']) for c in pts})
    ys = [np.mean([float(c['value']) for c in pts if int(c['step']) == s])
          for s in xs]
    ax.plot(np.array(xs) * per_step, ys, marker='.', label=v.name)
  finals = [float(c['value']) for c in curves if c['metric'] == 'eval_loss']
  if not finals:
    plt.close(fig)
    return []
  lo = min(finals)
  ax.set_ylim(lo - 0.02, lo + 4 * (np.median(finals) - lo) + 0.3)
  ax.set_xlabel('training ' + ('CPU ' if column == 'train_cpu_s' else '') +
                'seconds (steps × measured s/step)')
  ax.set_ylabel('validation loss (nats/byte), mean over seeds')
  ax.set_title(f'{ab.name}: quality per second' +
               (f' ({", ".join(left_out)}: no CPU time recorded, left out)'
                if left_out else ''), fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, out, 'loss_per_second.png')


def eval_capacity(ab, rows, curves, out) -> list[str]:
  """Eval loss and dropped fraction per eval setting, one line per train cf."""
  names = list(ab.extra_evals)
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
  for v in ab.variants:
    loss = [values(rows, v.name, f'eval_loss@{n}') for n in names]
    drop = [values(rows, v.name, f'eval_dropped_fraction@{n}') for n in names]
    if not all(loss):
      continue
    x = np.arange(len(names))
    ax1.errorbar(x, [np.mean(l) for l in loss],
                 yerr=[np.std(l, ddof=1) if len(l) > 1 else 0 for l in loss],
                 marker='o', capsize=3, label=v.name)
    ax2.plot(x, [np.mean(d) for d in drop], marker='o', label=v.name)
  for ax, label in ((ax1, 'validation loss (nats/byte)'),
                    (ax2, 'dropped fraction of choices')):
    ax.set_xticks(range(len(names)), [f'eval {n}' for n in names],
                  fontsize=8)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
  ax1.legend(fontsize=8, title='trained at')
  ax1.set_title('same checkpoints, other eval capacity', fontsize=9)
  return _save(fig, out, 'eval_capacity.png')


def balance(ab, rows, curves, out) -> list[str]:
  """MaxVio and dead experts per α, and seed 0's sorted expert loads."""
  fig, axes = plt.subplots(1, 3, figsize=(13, 4))
  names = [v.name for v in ab.variants]
  for ax, column, label in ((axes[0], 'eval_max_violation', 'eval MaxVio'),
                            (axes[1], 'eval_dead_expert_fraction',
                             'eval dead-expert fraction')):
    for i, n in enumerate(names):
      xs = values(rows, n, column)
      if xs:
        ax.errorbar(i, np.mean(xs), yerr=np.std(xs, ddof=1) if len(xs) > 1
                    else 0, fmt='o', capsize=5, color='C0')
        ax.scatter([i] * len(xs), xs, s=12, color='C1', zorder=3)
    ax.set_xticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, axis='y')
  ax = axes[2]
  for n in names:
    seed0 = [r for r in rows if r['variant'] == n and int(r['seed']) == 0]
    if seed0 and seed0[0].get('expert_fraction'):
      layers = json.loads(seed0[0]['expert_fraction'])
      loads = np.sort(np.mean(layers, axis=0))[::-1]
      ax.plot(range(1, len(loads) + 1), loads, marker='o', label=n)
  ax.set_xlabel('expert rank (by load)')
  ax.set_ylabel('share of tokens (seed 0, last train step, layer mean)')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  return _save(fig, out, 'balance.png')


def loss_per_expert_count(ab, rows, curves, out) -> list[str]:
  """Final validation loss against E (log scale), E = 1 the dense twin."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  es, means, stds = [], [], []
  for v in ab.variants:
    xs = values(rows, v.name, 'eval_loss')
    if xs:
      es.append(v.overrides.get('moe.num_experts', 1))
      means.append(np.mean(xs))
      stds.append(np.std(xs, ddof=1) if len(xs) > 1 else 0)
  if not es:
    plt.close(fig)
    return []
  ax.errorbar(es, means, yerr=stds, marker='o', capsize=4)
  ax.set_xscale('log', base=2)
  ax.set_xlabel('experts E (1 = dense twin), fixed active parameters')
  ax.set_ylabel('final validation loss (nats/byte)')
  ax.grid(alpha=0.3)
  return _save(fig, out, 'loss_per_num_experts.png')


def curve_plots(*series):
  """A plot function drawing each (metric, label) of `series` over training,
  one figure per metric (mean over seeds, min..max band)."""
  def plot(ab, rows, curves, out) -> list[str]:
    del rows
    names = [plot_curves(ab, curves, out, metric=metric, ylabel=label,
                         name=f'{metric}.png') for metric, label in series]
    return [n for n in names if n]
  return plot


def combined(*plot_fns):
  """A plot function drawing every figure of `plot_fns`."""
  def plot(ab, rows, curves, out) -> list[str]:
    return [name for fn in plot_fns for name in fn(ab, rows, curves, out)]
  return plot


# Router logit size over training, with and without the z-loss.
router_logits = curve_plots(
    ('router_logit_max', 'max |router logit|'),
    ('router_logsumexp', 'mean logsumexp of router logits'))
