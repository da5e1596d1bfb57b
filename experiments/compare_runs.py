"""Compares two runs.csv files of one ablation, run by run (a rerun check).

  python -m experiments.compare_runs A/runs.csv B/runs.csv [--metric eval_loss]

Prints, for each (variant, seed) in both, the metric in A and B and B - A,
then the largest |B - A| and how many runs are bit-identical.
"""

from __future__ import annotations

import argparse
import csv
import sys


def _rows(path: str) -> dict[tuple[str, str], dict[str, str]]:
  with open(path, newline='') as f:
    return {(r['variant'], r['seed']): r for r in csv.DictReader(f)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('a')
  parser.add_argument('b')
  parser.add_argument('--metric', default='eval_loss')
  args = parser.parse_args(argv)
  a, b = _rows(args.a), _rows(args.b)
  both = sorted(set(a) & set(b))
  if not both:
    print('error: the two files share no (variant, seed) run', file=sys.stderr)
    return 2
  print(f'| variant | seed | A | B | B - A |\n|---|---|---|---|---|')
  diffs = []
  for key in both:
    va, vb = float(a[key][args.metric]), float(b[key][args.metric])
    diffs.append(vb - va)
    print(f'| {key[0]} | {key[1]} | {va:.6f} | {vb:.6f} | {vb - va:+.2e} |')
  worst = max(range(len(both)), key=lambda i: abs(diffs[i]))
  print(f'\n{len(both)} runs in both; {sum(d == 0 for d in diffs)} identical; '
        f'largest |B - A| = {abs(diffs[worst]):.4f} ({both[worst][0]} seed '
        f'{both[worst][1]})')
  return 0


if __name__ == '__main__':
  sys.exit(main())
