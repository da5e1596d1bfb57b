"""Rewrites the verdict table of experiments/README.md from the results.

  python -m experiments.overview

One row per claim of every ablation that has results: the claim and its
source, the two sides' mean ± std over seeds, the difference and p-value,
and the verdict by the rule in experiments/verdict.py. The table sits
between two marker lines in the README; the prose around it is written by
hand.
"""

from __future__ import annotations

import pathlib

from experiments import records, report, run

README = pathlib.Path(__file__).parent / 'README.md'
BEGIN = '<!-- verdicts: begin (python -m experiments.overview) -->'
END = '<!-- verdicts: end -->'


def table() -> list[str]:
  lines = ['| ablation | claim (source) | claimed better | claimed worse | '
           'difference | p | verdict |', '|---|---|---|---|---|---|---|']
  for name in run.available():
    ab = run.load_ablation(name)
    store = records.RunStore(run.RESULTS / name)
    rows = store.rows()
    if not rows or not ab.comparisons:
      continue
    for comp, v, a, b in report.verdicts(ab, rows):
      side = lambda s, xs: (f'{s[0]} {s[1]} {report.mean_std(xs, ".4f")} '
                            f'(n={len(xs)})')
      lines.append(
          f'| [{name}](results/{name}/summary.md) | {comp.claim} '
          f'({ab.source}) | {side(comp.better, a)} | {side(comp.worse, b)} | '
          f'{v.difference:+.4f} | {v.p_value:.3g} | **{v.verdict}** |')
  return lines


def main() -> None:
  text = README.read_text()
  if BEGIN not in text or END not in text:
    raise SystemExit(f'error: {README} lacks the marker lines {BEGIN!r} and '
                     f'{END!r}; add them where the table goes.')
  head, rest = text.split(BEGIN, 1)
  _, tail = rest.split(END, 1)
  README.write_text('\n'.join([head.rstrip('\n'), BEGIN, *table(), END]) +
                    tail)
  print(f'wrote the verdict table of {README}')


if __name__ == '__main__':
  main()
