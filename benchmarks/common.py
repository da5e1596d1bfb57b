"""Shared benchmark plumbing: timing, table printing, JSON output."""

from __future__ import annotations

import json
import math
import pathlib
import re
import statistics
import time
from typing import Callable

from moe_jax import machine


def time_fn(fn: Callable[[], object], *, warmup: int = 2, repeats: int = 5,
            inner: int = 3) -> dict[str, float]:
  """Median and min seconds per call of `fn` (which must block on its result).

  Each repeat times `inner` back-to-back calls, so one slow scheduler tick
  does not decide the figure; the median over repeats is what we report.
  """
  for _ in range(warmup):
    fn()
  samples = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(inner):
      fn()
    samples.append((time.perf_counter() - start) / inner)
  return {'median_s': statistics.median(samples), 'min_s': min(samples)}


def time_interleaved(fns: dict[str, Callable[[], object]], *, warmup: int = 2,
                     rounds: int = 7, inner: int = 3) -> dict[str, float]:
  """Median seconds per call of each fn, timed in alternating rounds.

  Alternating A, B, A, B... spreads slow drifts of a shared machine (another
  process, thermal state) over every candidate instead of biasing whichever
  ran during the slow spell.
  """
  for fn in fns.values():
    for _ in range(warmup):
      fn()
  samples = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      start = time.perf_counter()
      for _ in range(inner):
        fn()
      samples[name].append((time.perf_counter() - start) / inner)
  return {name: statistics.median(s) for name, s in samples.items()}


def written_bytes(hlo_text: str) -> int:
  """Bytes the compiled program writes to memory, counted from its HLO.

  Sums the result shapes of the entry computation's instructions, each a
  buffer XLA materialises (bitcasts, parameters, constants and tuple plumbing
  excluded); what happens inside a fusion stays in registers or cache and is
  not counted. XLA's own 'bytes accessed' counts a fused gather's whole
  operand at every use, so where token movement is gathers, this says more
  about the traffic that changed.
  """
  entry = hlo_text[hlo_text.index('\nENTRY'):]
  entry = entry[:entry.index('\n}\n')]
  skip = {'bitcast', 'parameter', 'constant', 'get-tuple-element', 'tuple'}
  total = 0
  for line in entry.splitlines()[1:]:
    m = re.match(r'\s*(?:ROOT )?%\S+ = (.*?) ([a-z][a-z0-9-]*)\(', line)
    if not m or m.group(2) in skip:
      continue
    for dtype, dims in re.findall(r'\b([a-z]+[0-9]*)\[([0-9,]*)\]',
                                  m.group(1)):
      bits = int(re.sub(r'\D', '', dtype) or 8)  # pred: one byte.
      total += math.prod(int(d) for d in dims.split(',') if d) * bits // 8
  return total


def environment() -> dict[str, str]:
  m = machine.describe()
  return {**{k: m[k] for k in ('jax', 'backend', 'device', 'devices', 'cpu')},
          'date': time.strftime('%Y-%m-%d')}


def print_table(rows: list[dict], columns: list[str]) -> None:
  cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(c), *(len(row[i]) for row in cells))
            for i, c in enumerate(columns)]
  line = lambda vals: '| ' + ' | '.join(v.ljust(w) for v, w in zip(vals, widths)) + ' |'
  print(line(columns))
  print('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
  for row in cells:
    print(line(row))


def _fmt(value) -> str:
  if isinstance(value, float):
    return f'{value:.4g}'
  return '' if value is None else str(value)


# Untracked (runs/ is git-ignored), so a user's run leaves the checkout
# clean; pass --out=benchmarks/results/<name>.json to update the committed
# results.
OUT_DIR = pathlib.Path(__file__).resolve().parents[1] / 'runs' / 'benchmarks'


def default_out(name: str) -> str:
  return str(OUT_DIR / f'{name}.json')


def write_json(path: str | pathlib.Path, payload: dict) -> None:
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({'environment': environment(), **payload},
                             indent=2) + '\n')
  print(f'wrote {path}')
