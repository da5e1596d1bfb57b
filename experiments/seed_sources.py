"""How much of the seed-to-seed spread comes from the init and from the data order.

  python -m experiments.seed_sources

Reads three sets of runs of the regime pilot's dense and switch_top1 (made
by experiments/rerun_2026-12.sh): seeds varying both the initialisation and
the batch order (results/regime), the initialisation only (data order held
at seed 0; results/seed_sources_init) and the batch order only (init held at
seed 0; results/seed_sources_data). For each it gives the spread over seeds
of each variant's final loss and of the paired difference switch − dense,
whose spread is what decides the verdicts (experiments/verdict.py). Prints a
table and writes results/seed_sources.md.
"""

from __future__ import annotations

import numpy as np

from experiments import judge, report, run, run_store, verdict

SOURCES = (('init and data order', 'regime'),
           ('initialisation only', 'seed_sources_init'),
           ('data order only', 'seed_sources_data'))
PAIR = ('switch_top1', 'dense')


def rows_of(folder: str) -> list[dict]:
  return run_store.RunStore(run.RESULTS / folder).rows()


def table() -> list[str]:
  lines = ['| seeds vary | n | dense std | switch_top1 std | switch − dense: '
           'mean ± std | detectable at n (80% power) |', '|---|---|---|---|---|---|']
  for label, folder in SOURCES:
    rows = rows_of(folder)
    a, b = (judge.by_seed(rows, v, 'eval_loss') for v in PAIR)
    seeds = sorted(set(a) & set(b))
    if len(seeds) < 2:
      lines.append(f'| {label} | {len(seeds)} | – | – | – | – |')
      continue
    diffs = np.array([a[s] - b[s] for s in seeds])
    sd = float(np.std(diffs, ddof=1))
    mde = verdict.min_detectable_effect(sd, len(seeds))
    lines.append(
        f'| {label} | {len(seeds)} | '
        f'{np.std([b[s] for s in seeds], ddof=1):.4f} | '
        f'{np.std([a[s] for s in seeds], ddof=1):.4f} | '
        f'{diffs.mean():+.4f} ± {sd:.4f} | {report.mde_text(mde)} |')
  return lines


def main() -> None:
  lines = table()
  print('\n'.join(lines))
  out = run.RESULTS / 'seed_sources.md'
  out.write_text('# Where the seed spread comes from\n\nMade by `python -m '
                 'experiments.seed_sources` from the runs in '
                 + ', '.join(f'`results/{f}`' for _, f in SOURCES) +
                 ' (final validation loss, nats/byte, regime pilot at 1000 '
                 'steps).\n\n' + '\n'.join(lines) + '\n')
  print(f'wrote {out}')


if __name__ == '__main__':
  main()
