"""Does a run's numbers depend on how many CPUs its process may use?

  python benchmarks/cpu_count_numerics.py [--steps 43] [--out=...json]

Trains the regime's switch model (experiments/regime_config.py) for --steps
steps from the same initialisation and batches in two fresh processes with
the runner's XLA flags: one pinned to one CPU before jax starts, one free to
use every CPU of this process. Prints, for each, the loop fusions XLA split
over its thread pool (`outer_dimension_partitions` > 1 in the compiled step)
and the last loss; then the largest parameter difference between the two.
This is why experiments/scheduler.py pins every run (nothing is timed, so a
busy machine gives the same numbers).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def train(steps: int, out: str) -> None:
  """In a child process: `steps` train steps; parameters to `out`.npy."""
  sys.path.insert(0, str(ROOT))
  import jax  # pylint: disable=g-import-not-at-top
  from experiments.regime_config import regime_base  # pylint: disable=g-import-not-at-top
  from moe_jax.train.setup import init_state, load_data, make_mesh, model_config  # pylint: disable=g-import-not-at-top
  from moe_jax.train.step import train_step  # pylint: disable=g-import-not-at-top
  config = regime_base(1000)
  mcfg = model_config(config)
  graphdef, state, _, tx = init_state(mcfg, config, make_mesh(config, mcfg))
  batches = load_data(config).batches
  step = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx))
  compiled = step.lower(state, batches.batch_at(0)).compile()
  for i in range(steps):
    state, metrics = compiled(state, batches.batch_at(i))
  np.save(out, np.concatenate([np.asarray(x).ravel()
                               for x in jax.tree.leaves(state.params)]))
  print(json.dumps({
      'cpus': len(os.sched_getaffinity(0)),
      # Fusions whose loop XLA splits into more than one part.
      'partitioned_fusions': sum(
          int(n) > 1 for n in re.findall(
              r'outer_dimension_partitions":\["(\d+)"', compiled.as_text())),
      'last_loss': float(metrics['loss'])}))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=43)
  parser.add_argument('--out', default=None, help='JSON results')
  parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    train(args.steps, args.child)
    return
  sys.path.insert(0, str(ROOT))
  from experiments import scheduler  # pylint: disable=g-import-not-at-top
  cpus = sorted(os.sched_getaffinity(0))
  env = dict(os.environ, XLA_FLAGS=scheduler.RUN_XLA_FLAGS)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, mask in (('one_cpu', cpus[:1]), ('all_cpus', cpus)):
      npy = f'{tmp}/{name}.npy'
      command = ['taskset', '-c', ','.join(map(str, mask)), sys.executable,
                 __file__, f'--steps={args.steps}', f'--child={npy}']
      line = subprocess.run(command, env=env, check=True, text=True,
                            capture_output=True).stdout.strip().splitlines()[-1]
      results[name] = json.loads(line)
      results[name]['params'] = np.load(npy)
  diff = float(np.max(np.abs(results['one_cpu'].pop('params') -
                             results['all_cpus'].pop('params'))))
  for name, r in results.items():
    print(f'{name}: {r}')
  print(f'largest parameter difference after {args.steps} steps: {diff:.3g}')
  if args.out:
    pathlib.Path(args.out).write_text(json.dumps(
        {'steps': args.steps, **results, 'max_param_diff': diff}, indent=1))


if __name__ == '__main__':
  main()
