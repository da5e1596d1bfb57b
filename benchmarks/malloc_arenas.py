"""Does glibc's allocator cost the ablation runs CPU time?

  python benchmarks/malloc_arenas.py [--steps 300] [--rounds 2] [--out=...json]

Why: a pinned ablation worker spent about a third of its CPU time in the
kernel, on some 200k minor page faults a second (`perf record -e
page-faults`: XLA:CPU's kernels touching freshly allocated output buffers).
glibc gives each thread its own arena, and those arenas hand freed memory
back to the kernel, so every step faults its buffers in again. One arena
(MALLOC_ARENA_MAX=1), no mmap'd chunks and no trimming keep the memory.

Trains the regime's switch model for --steps steps, one pinned run at a
time (`python -m experiments.run regime --variants switch_top1 --seeds 1
--steps N --fresh --jobs 1`), alternately with glibc's defaults and with
`ALLOCATOR_ENV` (experiments/scheduler.py), --rounds times each, after one
uncounted run that fills the compilation cache. Prints per
mode the run's training CPU seconds, tokens/s and the page faults and kernel
seconds of the whole command, and whether the two modes' eval losses and
loss curves are bit-identical. Timings mean something only on a quiet
machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments.scheduler import ALLOCATOR_ENV  # pylint: disable=g-import-not-at-top,wrong-import-position

MODES = {'glibc_defaults': {}, 'one_arena': ALLOCATOR_ENV}


def _run(mode: str, steps: int, out: pathlib.Path) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith('MALLOC_')}
  env.update(MODES[mode])
  env['MOE_JAX_KEEP_ALLOCATOR'] = '1'  # The runner must not set its own.
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  subprocess.run([sys.executable, '-m', 'experiments.run', 'regime',
                  '--variants', 'switch_top1', '--seeds', '1', '--steps',
                  str(steps), '--fresh', '--jobs', '1', '--out', str(out)],
                 cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  with open(out / 'runs.csv', newline='') as f:
    row = next(csv.DictReader(f))
  with open(out / 'curves.csv', newline='') as f:
    curve = [r['value'] for r in csv.DictReader(f) if r['metric'] == 'train_loss']
  return {'mode': mode, 'train_cpu_s': float(row['train_cpu_s']),
          'tokens_per_sec': float(row['tokens_per_sec']),
          'eval_loss': row['eval_loss'], 'train_loss_curve': curve,
          'minor_faults': after.ru_minflt - before.ru_minflt,
          'kernel_s': after.ru_stime - before.ru_stime,
          'user_s': after.ru_utime - before.ru_utime}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=300)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--out', default=None)
  args = parser.parse_args(argv)
  runs = []
  with tempfile.TemporaryDirectory() as tmp:
    # A first run, not counted, fills the compilation cache for both modes.
    _run('glibc_defaults', args.steps, pathlib.Path(tmp) / 'warmup')
    for r in range(args.rounds):
      for mode in MODES:  # Interleaved, so drift in the machine hits both.
        runs.append(_run(mode, args.steps, pathlib.Path(tmp) / f'{mode}{r}'))
  print('| mode | train CPU s | tokens/s | minor faults | kernel s | user s |')
  print('|---|---|---|---|---|---|')
  for run in runs:
    print(f"| {run['mode']} | {run['train_cpu_s']:.2f} | "
          f"{run['tokens_per_sec']:,.0f} | {run['minor_faults']:,} | "
          f"{run['kernel_s']:.2f} | {run['user_s']:.2f} |")
  same = all(a['eval_loss'] == runs[0]['eval_loss'] and
             a['train_loss_curve'] == runs[0]['train_loss_curve'] for a in runs)
  print(f'eval loss and train-loss curve bit-identical across all runs: {same}')
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(
        {'steps': args.steps, 'rounds': args.rounds, 'env': ALLOCATOR_ENV,
         'identical': same, 'runs': runs,
         'load_average_at_end': os.getloadavg()}, indent=1) + '\n')


if __name__ == '__main__':
  main()
