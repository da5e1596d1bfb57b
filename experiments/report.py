"""summary.md and the standard plots of an ablation, from runs.csv/curves.csv."""

from __future__ import annotations

import datetime
import math
import os
import pathlib
import platform

import matplotlib
matplotlib.use('Agg')  # Files only; no display on a CPU box or in CI.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from experiments import verdict as verdict_lib

# (runs.csv column, heading, format) of the per-variant table.
TABLE = (('eval_loss', 'val loss (nats/byte)', '.4f'),
         ('eval_bits_per_byte', 'bits/byte', '.4f'),
         ('eval_dropped_fraction', 'dropped', '.3f'),
         ('eval_max_violation', 'MaxVio', '.2f'),
         ('eval_dead_expert_fraction', 'dead experts', '.3f'),
         ('tokens_per_sec', 'tokens/s', ',.0f'),
         ('wall_s', 'wall s', '.0f'))


def values(rows, variant: str, column: str) -> list[float]:
  """The finite values of `column` over the seeds of `variant`."""
  return list(by_seed(rows, variant, column).values())


def mean_std(xs, fmt: str) -> str:
  if not xs:
    return '–'
  if len(xs) == 1:
    return f'{xs[0]:{fmt}}'
  return f'{np.mean(xs):{fmt}} ± {np.std(xs, ddof=1):{fmt}}'


def variant_table(ab, rows) -> list[str]:
  lines = ['| variant | overrides | n | ' + ' | '.join(h for _, h, _ in TABLE)
           + ' |', '|---' * (len(TABLE) + 3) + '|']
  base = ab.base(ab.steps)
  for v in ab.variants:
    n = len(values(rows, v.name, 'eval_loss'))
    # Only what differs from the ablation's base config.
    over = ', '.join(f'{k}={val}' for k, val in v.overrides.items()
                     if _get(base, k) != val) or '–'
    cells = [mean_std(values(rows, v.name, c), f) for c, _, f in TABLE]
    lines.append(f'| {v.name} | {over} | {n} | ' + ' | '.join(cells) + ' |')
  failed = [r for r in rows if str(r.get('status', 'ok')) != 'ok']
  for r in failed:
    lines.append(f'\n{r["variant"]} seed {r["seed"]}: {r["status"]}')
  return lines


def _get(config, field: str):
  node = config
  for part in field.split('.'):
    if part not in node:
      return None
    node = node[part]
  return node


def extra_eval_table(ab, rows) -> list[str]:
  if not ab.extra_evals:
    return []
  names = list(ab.extra_evals)
  lines = ['| trained as | ' + ' | '.join(
      f'loss @ {n} (dropped)' for n in names) + ' |',
           '|---' * (len(names) + 1) + '|']
  for v in ab.variants:
    cells = [f'{mean_std(values(rows, v.name, f"eval_loss@{n}"), ".4f")} '
             f'({mean_std(values(rows, v.name, f"eval_dropped_fraction@{n}"), ".3f")})'
             for n in names]
    lines.append(f'| {v.name} | ' + ' | '.join(cells) + ' |')
  return lines


def by_seed(rows, variant: str, column: str) -> dict[int, float]:
  """{seed: value} of the finite values of `column` for `variant`."""
  out = {}
  for r in rows:
    if r['variant'] == variant:
      try:
        v = float(r[column])
      except (KeyError, TypeError, ValueError):
        continue
      if math.isfinite(v):
        out[int(r['seed'])] = v
  return out


def verdicts(ab, rows) -> list[tuple]:
  """(comparison, Verdict, better values, worse values) per claim.

  Paired by seed when both sides have the same seeds (the rule in
  experiments/verdict.py), Welch otherwise.
  """
  out = []
  for comp in ab.comparisons:
    a, b = by_seed(rows, *comp.better), by_seed(rows, *comp.worse)
    paired = len(a) >= 2 and set(a) == set(b)
    seeds = sorted(a) if paired else None
    xa = [a[s] for s in seeds] if paired else list(a.values())
    xb = [b[s] for s in seeds] if paired else list(b.values())
    out.append((comp, verdict_lib.judge(xa, xb, paired=paired), xa, xb))
  return out


def verdict_table(ab, rows) -> list[str]:
  lines = ['| claim | better (claimed) | worse (claimed) | difference | p | '
           'verdict |', '|---|---|---|---|---|---|']
  for comp, v, a, b in verdicts(ab, rows):
    side = lambda s, xs: f'{s[0]} {s[1]}: {mean_std(xs, ".4f")} (n={len(xs)})'
    lines.append(f'| {comp.claim} | {side(comp.better, a)} | '
                 f'{side(comp.worse, b)} | {v.difference:+.4f} | '
                 f'{v.p_value:.3g} | **{v.verdict}** |')
  return lines


def plot_curves(ab, curves, out: pathlib.Path, metric: str = 'eval_loss',
                ylabel: str = 'validation loss (nats/byte)',
                name: str = 'val_loss_curves.png') -> str | None:
  """Mean over seeds per variant, with a min-max band over seeds."""
  fig, ax = plt.subplots(figsize=(7, 4.5))
  drawn = False
  for v in ab.variants:
    pts = [c for c in curves if c['variant'] == v.name and c['metric'] == metric]
    steps = sorted({int(c['step']) for c in pts})
    if not steps:
      continue
    by_step = [[float(c['value']) for c in pts if int(c['step']) == s]
               for s in steps]
    mean = np.array([np.mean(x) for x in by_step])
    ax.plot(steps, mean, marker='.', label=v.name)
    ax.fill_between(steps, [min(x) for x in by_step],
                    [max(x) for x in by_step], alpha=0.2)
    drawn = True
  if not drawn:
    plt.close(fig)
    return None
  if metric == 'eval_loss':  # Zoom on the end, where the variants differ.
    finals = [c['value'] for c in curves if c['metric'] == metric]
    lo = min(finals)
    ax.set_ylim(lo - 0.02, lo + 4 * (np.median(finals) - lo) + 0.3)
  ax.set_xlabel('step')
  ax.set_ylabel(ylabel)
  ax.set_title(f'{ab.name}: {ylabel} (mean, band = min..max over seeds)',
               fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out / name, dpi=110)
  plt.close(fig)
  return name


def plot_final(ab, rows, out: pathlib.Path, column: str = 'eval_loss',
               ylabel: str = 'final validation loss (nats/byte)',
               name: str = 'final_loss.png') -> str | None:
  """Final metric per variant: mean with ±1 std error bars and each seed."""
  names = [v.name for v in ab.variants if values(rows, v.name, column)]
  if not names:
    return None
  fig, ax = plt.subplots(figsize=(max(5, 1.1 * len(names)), 4))
  for i, n in enumerate(names):
    xs = values(rows, n, column)
    ax.errorbar(i, np.mean(xs), yerr=np.std(xs, ddof=1) if len(xs) > 1 else 0,
                fmt='o', capsize=5, color='C0')
    ax.scatter([i] * len(xs), xs, s=12, color='C1', zorder=3)
  ax.set_xticks(range(len(names)), names, rotation=30, ha='right', fontsize=8)
  ax.set_ylabel(ylabel)
  ax.set_title(f'{ab.name}: mean ± std (bars), seeds (dots)', fontsize=9)
  ax.grid(alpha=0.3, axis='y')
  fig.tight_layout()
  fig.savefig(out / name, dpi=110)
  plt.close(fig)
  return name


def _environment() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return (f'{platform.platform()}, {platform.processor() or platform.machine()}'
          f', {os.cpu_count()} CPU cores visible; Python '
          f'{platform.python_version()}, jax {jax.__version__} on '
          f'{jax.default_backend()}' + (
              f'; XLA_FLAGS={os.environ["XLA_FLAGS"]}'
              if os.environ.get('XLA_FLAGS') else ''))


def write(ab, rows, curves, out: pathlib.Path, command: str) -> None:
  """Rewrites summary.md and the plots from the rows gathered so far."""
  out.mkdir(parents=True, exist_ok=True)
  plots = [plot_curves(ab, curves, out), plot_final(ab, rows, out)]
  if ab.plot is not None and rows:
    plots.extend(ab.plot(ab, rows, curves, out))
  steps = sorted({int(r['steps']) for r in rows}) if rows else []
  seeds = sorted({int(r['seed']) for r in rows}) if rows else []
  lines = [
      f'# {ab.name}: {ab.title}', '',
      f'Claims from: {ab.source}.', '',
      f'Command: `{command}`  ',
      f'Machine: {_environment()}  ',
      f'Written: {datetime.date.today().isoformat()}; {len(rows)} runs, '
      f'steps {steps}, seeds {seeds}. Validation: the last 5% of the corpus.',
      '']
  if ab.notes:
    lines += [ab.notes.strip(), '']
  walls = [float(r['wall_s']) for r in rows
           if isinstance(r.get('wall_s'), (int, float)) and
           math.isfinite(float(r['wall_s']))]
  if walls:
    resumed = sum(1 for r in rows if isinstance(
        r.get('resumed_from_step'), (int, float)) and r['resumed_from_step'] > 0)
    lines += [f'Wall time of these runs, one after another (compilation and '
              f'evaluation included; what a from-scratch rerun costs): '
              f'{sum(walls) / 60:.0f} min' + (
                  f', of which {resumed} run(s) resumed from a checkpoint '
                  'count only their last part' if resumed else '') + '.', '']
  lines += ['## Results per variant (mean ± std over seeds)', '']
  lines += variant_table(ab, rows) + ['']
  extra = extra_eval_table(ab, rows)
  if extra:
    lines += ['## The same checkpoints at other eval settings', ''] + extra + ['']
  if ab.comparisons:
    lines += ['## Verdicts', '',
              'Rule (experiments/verdict.py): t-test over seeds, paired by '
              'seed (same seed = same batches) when both sides have the same '
              'seeds, else Welch; two-sided; p < 0.05 in the claimed '
              'direction agrees, in the other disagrees, otherwise '
              'inconclusive.', '']
    lines += verdict_table(ab, rows) + ['']
  lines += ['## Plots', ''] + [f'![{p}]({p})' for p in plots if p] + ['']
  (out / 'summary.md').write_text('\n'.join(lines))
