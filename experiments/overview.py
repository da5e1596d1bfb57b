"""Rewrites the verdict table of experiments/README.md from the results.

  python -m experiments.overview

One row per claim of every ablation that has results: the claim and its
source, what the sides hold equal (basis), the two sides' mean ± std over
seeds, the difference and p-value, the verdict by the rule in
experiments/verdict.py, the smallest effect the seeds could detect, the
seeds that 0.01 nats/byte would need, and the same claim on the runs made
before 2026-12 (experiments/results_2026-11). The table sits between two
marker lines in the README; the prose around it is written by hand.
"""

from __future__ import annotations

import pathlib

from experiments import judge, report, run, run_store

README = pathlib.Path(__file__).parent / 'README.md'
BEGIN = '<!-- verdicts: begin (python -m experiments.overview) -->'
END = '<!-- verdicts: end -->'


ARCHIVE = pathlib.Path(__file__).parent / 'results_2026-11'


def _before(name: str, ab) -> dict:
  """Each claim's verdict on the runs made before 2026-12
  (experiments/results_2026-11), by today's rule; claims without one are
  absent."""
  store = run_store.RunStore(ARCHIVE / name)
  rows = store.rows()
  return {j.comparison.claim: j.verdict
          for j in (judge.verdicts(ab, rows, store.curves()) if rows else ())
          if j.measured}


def tally(now: list[str], before: list[str | None], waiting: int = 0) -> str:
  """One line counting the verdicts: all of today's, then those claims that
  also have a verdict before 2026-12, then and now, so that the two counts
  cover the same claims. `waiting` claims, whose variants have no runs yet,
  are not counted as inconclusive: nothing was measured."""
  def count(verdicts):
    return ', '.join(f'{sum(v == kind for v in verdicts)} {word}'
                     for kind, word in (('agrees', 'agree'),
                                        ('disagrees', 'disagree'),
                                        ('inconclusive', 'inconclusive')))
  both = [i for i, b in enumerate(before) if b is not None]
  return (f'Verdicts of the {len(now)} claims: {count(now)}. Of the '
          f'{len(both)} that also have runs from before 2026-12: then '
          f'{count([before[i] for i in both])}; now '
          f'{count([now[i] for i in both])}.' +
          (f' {waiting} more claims wait for runs of their variants and are '
           'not in the table.' if waiting else ''))


def table() -> list[str]:
  lines = ['| ablation | claim (source) | basis | claimed better | claimed '
           'worse | difference | p | verdict | detectable (80% power) | '
           'seeds for 0.01 | before 2026-12 |', '|---' * 11 + '|']
  now, before, waiting = [], [], 0
  for name in run.available():
    ab = run.load_ablation(name)
    store = run_store.RunStore(run.RESULTS / name)
    rows = store.rows()
    if not rows or not ab.comparisons:
      continue
    earlier = _before(name, ab)
    for j in judge.verdicts(ab, rows, store.curves()):
      comp = j.comparison
      if not j.measured:  # a partly run ablation
        waiting += 1
        continue
      old = earlier.get(comp.claim)
      now.append(j.verdict.verdict)
      before.append(old and old.verdict)
      note = f'; {j.note}' if j.note else ''
      lines.append(
          f'| [{name}](results/{name}/summary.md) | {comp.claim} '
          f'({ab.source}{note}) | {comp.basis} | '
          f'{report.side(comp.better, j.better)} | '
          f'{report.side(comp.worse, j.worse)} | '
          f'{j.verdict.difference:+.4f} | {j.verdict.p_value:.3g} | '
          f'**{j.verdict.verdict}** | {report.mde_text(j.mde)} | '
          f'{j.seeds_for_001 or "–"} | '
          f'{f"{old.difference:+.4f} {old.verdict}" if old else "–"} |')
  return lines + ['', tally(now, before, waiting)]


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
