"""summary.md and the standard plots of an ablation, from runs.csv/curves.csv."""

from __future__ import annotations

import datetime
import math
import pathlib

import matplotlib
matplotlib.use('Agg')  # Files only; no display on a CPU box or in CI.
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from flax import traverse_util

from experiments import derived, run_store
from experiments.judge import by_seed, verdicts
from moe_jax import machine

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
  base = traverse_util.flatten_dict(ab.base(ab.steps).to_dict(), sep='.')
  for v in ab.variants:
    n = len(values(rows, v.name, 'eval_loss'))
    # Only what differs from the ablation's base config.
    over = ', '.join(f'{k}={val}' for k, val in v.overrides.items()
                     if base.get(k) != val) or '–'
    cells = [mean_std(values(rows, v.name, c), f) for c, _, f in TABLE]
    lines.append(f'| {v.name} | {over} | {n} | ' + ' | '.join(cells) + ' |')
  failed = [r for r in rows if str(r.get('status', 'ok')) != 'ok']
  for r in failed:
    lines.append(f'\n{r["variant"]} seed {r["seed"]}: {r["status"]}')
  return lines


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


def derived_table(ab, rows, names=None) -> list[str]:
  """Per variant, the ablation's columns computed from the curves (or the
  columns `names`)."""
  names = list(ab.derived) if names is None else list(names)
  if not names:
    return []
  lines = ['| variant | ' + ' | '.join(names) + ' |',
           '|---' * (len(names) + 1) + '|']
  for v in ab.variants:
    lines.append(f'| {v.name} | ' + ' | '.join(
        mean_std(values(rows, v.name, n), '.4g') for n in names) + ' |')
  return lines


def side(variant_column, xs) -> str:
  return (f'{variant_column[0]} {variant_column[1]}: '
          f'{mean_std(xs, ".4f")} (n={len(xs)})')


def verdict_table(ab, rows, curves=()) -> list[str]:
  lines = ['| claim | basis | better (claimed) | worse (claimed) | difference '
           '| p | verdict | detectable (80% power) | seeds for 0.01 |',
           '|---|---|---|---|---|---|---|---|---|']
  for j in verdicts(ab, rows, curves):
    note = f' ({j.note})' if j.note else ''
    lines.append(
        f'| {j.comparison.claim}{note} | {j.comparison.basis} | '
        f'{side(j.comparison.better, j.better)} | '
        f'{side(j.comparison.worse, j.worse)} | '
        f'{j.verdict.difference:+.4f} | {j.verdict.p_value:.3g} | '
        f'**{j.verdict.verdict}** | {mde_text(j.mde)} | '
        f'{j.seeds_for_001 or "–"} |')
  return lines


def mde_text(value: float) -> str:
  return f'±{value:.4f}' if math.isfinite(value) else '–'


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
  m = machine.describe()
  return (f'{m["platform"]}, {m["cpu"]}, {m["cpu_cores"]} CPU cores visible; '
          f'Python {m["python"]}, jax {m["jax"]} on {m["backend"]}')


def _cpus_note(rows) -> str:
  """How many CPUs each run could use (experiments/scheduler.py)."""
  recorded = [run_store.recorded_cpus(r) for r in rows]
  counts = sorted({c for c in recorded if c is not None})
  unknown = recorded.count(None)
  parts = [f'{c} CPU(s) per run' + (' (pinned)' if c == 1 else '')
           for c in counts]
  if unknown:
    parts.append(f'{unknown} runs unpinned (made before 2026-12-06)')
  return ', '.join(parts) or 'no runs'


def _distinct(rows, column: str) -> list[str]:
  seen = []
  for r in rows:
    value = r.get(column)
    if isinstance(value, str) and value and value not in seen:
      seen.append(value)
  return seen


def setup_line(ab, rows) -> str:
  """The runs' length, batch and data, from their config and rows."""
  if not rows:
    return ''
  c = ab.base(int(rows[0]['steps']))
  steps = sorted({int(r['steps']) for r in rows})
  tokens = ', '.join(f'{n * c.batch_size * c.seq_len / 1e6:.1f}M' for n in
                     steps)
  data = _distinct(rows, 'data') or ['(not recorded in these rows)']
  held = _distinct(rows, 'held_out') or ['(not recorded in these rows)']
  return (f'Each run: {"/".join(map(str, steps))} steps of {c.batch_size} × '
          f'{c.seq_len} positions ({tokens} positions). Data: '
          f'{"; ".join(data)}. Validation: {"; ".join(held)}; the final '
          'numbers are over all of it, the curves over train.eval_batches '
          'batches spread across it.')


def write(ab, rows, curves, out: pathlib.Path) -> None:
  """Rewrites summary.md and the plots from the rows gathered so far."""
  out.mkdir(parents=True, exist_ok=True)
  rows = derived.with_derived(ab, rows, curves)
  plots = [plot_curves(ab, curves, out), plot_final(ab, rows, out)]
  if ab.plot is not None and rows:
    plots.extend(ab.plot(ab, rows, curves, out))
  steps = sorted({int(r['steps']) for r in rows}) if rows else []
  seeds = sorted({int(r['seed']) for r in rows}) if rows else []
  commands = _distinct(rows, 'command')
  reused = _distinct(rows, 'reused_from')
  lines = [
      f'# {ab.name}: {ab.title}', '',
      f'Claims from: {ab.source}.', '',
      'Commands that trained these runs' + (
          f' (others reused from {", ".join(reused)})' if reused else '') +
      ': ' + (', '.join(f'`{c}`' for c in commands) or
              '(not recorded: rows made before 2026-12-05)') + '  ',
      f'Machine: {_environment()}; XLA_FLAGS of the runs: '
      + (', '.join(f'`{f}`' for f in _distinct(rows, 'xla_flags')) or
         'none recorded') + '; ' + _cpus_note(rows) + '  ',
      f'Written: {datetime.date.today().isoformat()}; {len(rows)} runs, '
      f'steps {steps}, seeds {seeds}.', '',
      setup_line(ab, rows), '']
  if ab.notes:
    lines += [ab.notes.strip(), '']
  walls = [float(r['wall_s']) for r in rows
           if isinstance(r.get('wall_s'), (int, float)) and
           math.isfinite(float(r['wall_s']))]
  if walls:
    resumed = sum(1 for r in rows if isinstance(
        r.get('resumed_from_step'), (int, float)) and r['resumed_from_step'] > 0)
    lines += [f'Wall time of these runs added up (compilation and '
              f'evaluation included; what a from-scratch rerun costs one '
              f'process, and the CPU time of single-threaded runs; --jobs J '
              f'divides the wall time by about J): '
              f'{sum(walls) / 60:.0f} min' + (
                  f', of which {resumed} run(s) resumed from a checkpoint '
                  'count only their last part' if resumed else '') + '.', '']
  lines += ['## Results per variant (mean ± std over seeds)', '']
  lines += variant_table(ab, rows) + ['']
  columns = derived_table(ab, rows)
  if columns:
    lines += ['## From the logged curves (experiments/derived.py)', '',
              'Mean ± std over seeds; the ablation file (and its notes above) '
              'defines each column.', ''] + columns + ['']
  if ab.checkpoint_metrics:
    lines += ['## From the last checkpoints', '',
              'Mean ± std over seeds; the ablation file (and its notes above) '
              'defines each column.', ''] + derived_table(
                  ab, rows, ab.checkpoint_metrics.columns) + ['']
  extra = extra_eval_table(ab, rows)
  if extra:
    lines += ['## The same checkpoints at other eval settings', ''] + extra + ['']
  if ab.comparisons:
    lines += ['## Verdicts', '',
              'Rule (experiments/verdict.py): paired t-test over the seeds '
              'both sides have (same seed = same initialisation and batches),'
              " Welch's test only when a run diverged; two-sided; p < 0.05 in "
              'the claimed direction agrees, in the other disagrees, '
              'otherwise inconclusive. "Detectable" is the true difference '
              'the test finds with 80% power at these seeds and this spread '
              '(an inconclusive verdict rules out larger effects); "seeds '
              'for 0.01" is how many paired seeds would detect 0.01 '
              'nats/byte.', '']
    lines += verdict_table(ab, rows, curves) + ['']
  lines += ['## Plots', ''] + [f'![{p}]({p})' for p in plots if p] + ['']
  (out / 'summary.md').write_text('\n'.join(lines))
