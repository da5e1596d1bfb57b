"""Tokens per second of wall time of a whole ablation, by how its runs use the cores.

  python -m benchmarks.ablation_throughput [--steps 1000] [--seeds 2]

Runs `python -m experiments.run regime` (dense and switch_top1, the regime
config of experiments/README.md) from scratch, once per mode, each in a
fresh process and results folder, and times the whole command:

  * threads: one run at a time, XLA:CPU's default threading (how the
    ablations ran until 2026-12);
  * jobs2_unpinned: two runs at a time (--jobs 2 --unpinned), one
    single-threaded process each, free to use every CPU (2026-12-01 to -06);
  * jobs2: the same, each process pinned to one CPU before jax starts (what
    experiments/scheduler.py does since 2026-12-06);
  * jobs1: one pinned run at a time: the same numbers as jobs2 are
    expected, bit for bit, since each run computes alone on one CPU;
  * jobs2_glibc: jobs2 with glibc's default allocator in the workers
    (MOE_JAX_KEEP_ALLOCATOR=1; how runs went until the allocator settings of
    experiments/scheduler.py): bit for bit jobs2's numbers, so the
    difference is the allocator's saving on a whole command.

Prints a table and writes JSON. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from benchmarks import common
from experiments import scheduler

# mode: (XLA_FLAGS, --jobs, pinned, glibc's default allocator). An empty
# XLA_FLAGS: the default threading.
MODES = {
    'threads': ('', 1, False, False),
    'jobs2_unpinned': (scheduler.RUN_XLA_FLAGS, 2, False, False),
    'jobs2': (scheduler.RUN_XLA_FLAGS, 2, True, False),
    'jobs1': (scheduler.RUN_XLA_FLAGS, 1, True, False),
    'jobs2_glibc': (scheduler.RUN_XLA_FLAGS, 2, True, True),
}
COMPARED = ('eval_loss', 'eval_bits_per_byte', 'eval_max_violation')


def run_mode(mode: str, steps: int, seeds: int, out: pathlib.Path) -> dict:
  flags, jobs, pinned, glibc = MODES[mode]
  # The runner sets the allocator variables only where they are unset, so
  # none may come from this process's own environment (as malloc_arenas.py).
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('MALLOC_') and k != 'MOE_JAX_KEEP_ALLOCATOR'}
  env.update(XLA_FLAGS=flags,
             # No compilation cache: every mode compiles, as a fresh run does.
             JAX_COMPILATION_CACHE_DIR=str(out / 'xla_cache'))
  if glibc:
    env['MOE_JAX_KEEP_ALLOCATOR'] = '1'
  command = [sys.executable, '-m', 'experiments.run', 'regime',
             '--variants', 'dense,switch_top1', '--seeds', str(seeds),
             '--steps', str(steps), '--jobs', str(jobs), '--fresh',
             '--out', str(out / mode)] + ([] if pinned else ['--unpinned'])
  start = time.perf_counter()
  subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
  wall = time.perf_counter() - start
  with (out / mode / 'runs.csv').open() as f:
    rows = list(csv.DictReader(f))
  tokens = sum(int(r['steps']) for r in rows) * 16 * 128
  return {'mode': mode, 'xla_flags': flags or '(default)', 'jobs': jobs,
          'pinned': pinned, 'glibc_allocator': glibc,
          'runs': len(rows), 'wall_s': round(wall, 1),
          'tokens_per_wall_s': round(tokens / wall),
          'rows': {f'{r["variant"]}/{r["seed"]}': {c: r[c] for c in COMPARED}
                   for r in rows}}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=1000)
  parser.add_argument('--seeds', type=int, default=2)
  parser.add_argument('--modes', default='threads,jobs2_unpinned,jobs2,jobs1')
  parser.add_argument('--out', default=common.default_out(
      'ablation_throughput'))
  args = parser.parse_args()
  load_before = os.getloadavg()
  with tempfile.TemporaryDirectory() as tmp:
    results = [run_mode(m, args.steps, args.seeds, pathlib.Path(tmp))
               for m in args.modes.split(',')]
  base = results[0]['tokens_per_wall_s']
  for r in results:
    r['speedup'] = round(r['tokens_per_wall_s'] / base, 2)
  common.print_table(results, ['mode', 'xla_flags', 'jobs', 'pinned',
                               'glibc_allocator', 'runs',
                               'wall_s', 'tokens_per_wall_s', 'speedup'])
  by_mode = {r['mode']: r['rows'] for r in results}
  # jobs1 = jobs2 is expected; pinned against unpinned is not (scheduler.py).
  for a, b in (('jobs1', 'jobs2'), ('jobs2', 'jobs2_unpinned'),
               ('jobs2_glibc', 'jobs2')):
    if a in by_mode and b in by_mode:
      print(f'{a} and {b} metrics bit-identical ({", ".join(COMPARED)} of '
            f'every run): {by_mode[a] == by_mode[b]}')
  common.write_json(args.out, {
      'steps': args.steps, 'seeds': args.seeds, 'results': results,
      'environment': common.environment(),
      'load_before': load_before, 'load_after': os.getloadavg()})


if __name__ == '__main__':
  main()
