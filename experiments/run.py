"""Runs an ablation: every variant at every seed, one after another.

  python -m experiments.run <ablation> [--seeds 3] [--steps N] [--quick]
      [--out DIR] [--variants a,b] [--report-only] [--fresh]
      [--config.<field>=<value> ...]

<ablation> is a file experiments/<ablation>.py defining ABLATION. The
--config overrides apply to every run (e.g. --config.data.kind=text
--config.data.path=my.txt reruns the ablation on other data). Results go to
experiments/results/<ablation>/ (…-quick/ for --quick): runs.csv,
curves.csv, summary.md and PNG plots; each run trains in its own workdir
under workdirs/. A rerun skips runs already in runs.csv and resumes an
interrupted one from its checkpoint. A run with the same config as one in
another ablation's results is copied from there, unless --fresh (which,
with --out to a new folder, retrains everything from scratch).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import json
import pathlib
import re
import sys
import time

from absl import logging

from experiments import records, report
from experiments.ablation import Ablation, apply_overrides
from moe_jax.errors import UserInputError
from moe_jax.train.interrupt import TrainingInterrupted

RESULTS = pathlib.Path(__file__).parent / 'results'


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog='python -m experiments.run', description=__doc__.splitlines()[0])
  parser.add_argument('ablation', help='experiments/<ablation>.py')
  parser.add_argument('--seeds', type=int, default=None,
                      help='seeds 0..N-1 (default 3; 2 with --quick)')
  parser.add_argument('--steps', type=int, default=None,
                      help="training steps (default: the ablation's)")
  parser.add_argument('--quick', action='store_true',
                      help='fewer steps and seeds, same tables and plots')
  parser.add_argument('--out', default=None, help='results folder')
  parser.add_argument('--variants', default=None,
                      help='comma-separated subset of variants to run now')
  parser.add_argument('--report-only', action='store_true',
                      help='only rebuild summary.md and plots from runs.csv')
  parser.add_argument('--fresh', action='store_true',
                      help="train every run; copy none from other ablations' "
                      'results (a from-scratch rerun; pair it with --out)')
  args, rest = parser.parse_known_args(argv)
  overrides = {}
  for item in rest:
    if not item.startswith('--config.') or '=' not in item:
      parser.error(f'unexpected argument {item!r}; overrides look like '
                   '--config.moe.top_k=2')
    field, value = item[len('--config.'):].split('=', 1)
    try:
      overrides[field] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      overrides[field] = value  # A bare string, e.g. a path.
  return args, overrides


def load_ablation(name: str) -> Ablation:
  try:
    module = importlib.import_module(f'experiments.{name}')
  except ModuleNotFoundError as e:
    raise UserInputError(
        f'no ablation {name!r} ({e}); pick one of {available()}.') from None
  if not isinstance(getattr(module, 'ABLATION', None), Ablation):
    raise UserInputError(f'experiments/{name}.py defines no ABLATION; pick '
                         f'one of {available()}.')
  return module.ABLATION


def available() -> list[str]:
  here = pathlib.Path(__file__).parent
  return sorted(p.stem for p in here.glob('*.py')
                if re.search(r'^ABLATION = Ablation\(', p.read_text(), re.M))


def run_ablation(ab: Ablation, *, seeds: int, steps: int, out: pathlib.Path,
                 overrides: dict, command: str,
                 only: list[str] | None = None,
                 reuse: bool = True) -> list[dict]:
  """Trains what runs.csv lacks (of `only`'s variants, if given); returns all
  rows. Rebuilds the report. With reuse, a run that another ablation's
  results already hold (same config hash) is copied, not retrained."""
  from moe_jax.train.trainer import NonFiniteLossError  # Slow import.
  store = records.RunStore(out)
  # Seed-major: an ablation stopped part-way holds every variant at the
  # first seeds, a balanced design, rather than some variants at none.
  plan = [(v, s) for s in range(seeds) for v in ab.variants]
  configs = {}
  for v, s in plan:
    c = ab.base(steps)
    apply_overrides(c, {**v.overrides, **overrides, 'seed': s})
    if ab.init_run is not None:
      # Relative to `out`, so the config hash in runs.csv does not depend on
      # where the checkout is; _run_config makes it a real path.
      apply_overrides(c, {'train.init_from': str(_init_workdir(ab, s))})
    configs[v.name, s] = c
    store.check_same_config(v.name, s, c)  # Before training anything.
  store.save()  # Keeps rows relabelled from the legacy hash.
  for name in only or ():
    ab.variant(name)  # An unknown name raises KeyError: one error line.
  todo = [(v, s) for v, s in plan if not store.has(v.name, s)
          and (not only or v.name in only)]
  if store.stale_defaults():
    print(f'warning: some runs in {store.csv_path} used other defaults of '
          'moe_jax/train/default_config.py than today\'s; their numbers may '
          'not match a rerun.', flush=True)
  finished = sum(store.has(v.name, s) for v, s in plan)
  print(f'[{ab.name}] {len(plan)} runs ({len(ab.variants)} variants x '
        f'{seeds} seeds, {steps} steps); {finished} already in '
        f'{store.csv_path}; {len(todo)} to run now', flush=True)
  started, done_walls = time.perf_counter(), []
  for i, (v, s) in enumerate(todo):
    eta = (f'ETA {sum(done_walls) / len(done_walls) * (len(todo) - i) / 60:.0f}'
           ' min' if done_walls else 'ETA after the first run')
    print(f'[{ab.name}] run {i + 1}/{len(todo)} to run now: {v.name} seed '
          f'{s} | {eta}', flush=True)
    t0 = time.perf_counter()
    config = configs[v.name, s]
    workdir = out / 'workdirs' / v.name / f'seed{s}'
    found = records.find_finished(RESULTS, config, out) if reuse else None
    if found is not None:
      try:
        store.add(*records.reuse_run(ab, v.name, s, config, found))
        print(f'[{ab.name}] reused the identical finished run '
              f'{store.rows()[-1]["reused_from"]} seed {s}', flush=True)
        report.write(ab, store.rows(), store.curves(), out, command)
        continue
      except FileNotFoundError:
        pass  # Its checkpoint is gone and extra evals need one: train.
    try:
      row = records.train_run(ab, v.name, s, config, workdir,
                              _run_config(ab, s, steps, overrides, out,
                                          config))
    except NonFiniteLossError as e:
      row = records.diverged_row(v.name, s, config, str(e))
    store.add(row, records.read_curves(workdir, v.name, s))
    done_walls.append(time.perf_counter() - t0)
    report.write(ab, store.rows(), store.curves(), out, command)
  rows = store.rows()
  report.write(ab, rows, store.curves(), out, command)
  print(f'[{ab.name}] done in {(time.perf_counter() - started) / 60:.1f} min;'
        f' summary: {out / "summary.md"}', flush=True)
  return rows


def _init_workdir(ab: Ablation, seed: int) -> pathlib.Path:
  """Where ab.init_run trains for `seed`, relative to the results folder."""
  return pathlib.Path('workdirs') / ab.init_run.name / f'seed{seed}'


def _run_config(ab: Ablation, seed: int, steps: int, overrides: dict,
                out: pathlib.Path, config):
  """The config a variant trains with: with an init_run, that run is
  trained first (or finished, or found done) and train.init_from points at
  it; otherwise `config` itself."""
  if ab.init_run is None:
    return config
  from moe_jax.train.trainer import train_and_evaluate  # Slow import.
  workdir = out / _init_workdir(ab, seed)
  if steps not in records.saved_steps(workdir):
    print(f'[{ab.name}] training {ab.init_run.name} seed {seed}, which the '
          f'variants start from', flush=True)
    init = ab.base(steps)
    apply_overrides(init, {**ab.init_run.overrides, **overrides, 'seed': seed})
    train_and_evaluate(init, str(workdir))
  return apply_overrides(config.copy_and_resolve_references(),
                         {'train.init_from': str(workdir)})


def _cache_compilations() -> None:
  """Seeds of one variant compile the same programs: compile them once.

  JAX's persistent cache only skips recompiling; results are unchanged.
  """
  import jax  # pylint: disable=g-import-not-at-top
  jax.config.update('jax_compilation_cache_dir', str(RESULTS / '.xla_cache'))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args, overrides = parse_args(argv)
  logging.set_verbosity(logging.WARNING)
  try:
    ab = load_ablation(args.ablation)
    seeds = args.seeds or (2 if args.quick else 3)
    steps = args.steps or (ab.quick_steps if args.quick else ab.steps)
    if seeds < 1 or steps < 1:
      raise UserInputError('--seeds and --steps must be positive.')
    out = pathlib.Path(args.out) if args.out else RESULTS / (
        ab.name + ('-quick' if args.quick else ''))
    if args.quick:
      # Two evaluations of 4 batches: the curves keep their shape, and the
      # whole ablation fits in minutes.
      overrides = {'train.eval_batches': 4,
                   'train.eval_every': max(1, steps // 2), **overrides}
    _cache_compilations()
    command = 'python -m experiments.run ' + ' '.join(argv)
    if args.report_only:
      store = records.RunStore(out)
      report.write(ab, store.rows(), store.curves(), out, command)
      print(f'summary: {out / "summary.md"}')
      return 0
    run_ablation(ab, seeds=seeds, steps=steps, out=out, overrides=overrides,
                 command=command,
                 only=args.variants.split(',') if args.variants else None,
                 reuse=not args.fresh)
  except (UserInputError, KeyError) as e:
    print(f'error: {str(e).strip(chr(39))}', file=sys.stderr)
    return 2
  except TrainingInterrupted as e:
    # The run saved a checkpoint; the same command resumes the ablation.
    print(f'stopped: {e}', file=sys.stderr)
    return e.exit_code
  return 0


if __name__ == '__main__':
  sys.exit(main())
