"""Runs an ablation: every variant at every seed.

  python -m experiments.run <ablation> [--seeds 3] [--steps N] [--quick]
      [--jobs J] [--init-seed K | --data-seed K] [--out DIR]
      [--variants a,b] [--report-only] [--fresh] [--unpinned]
      [--config.<field>=<value> ...]

<ablation> is a file experiments/<ablation>.py defining ABLATION. The
--config overrides apply to every run (e.g. --config.data.kind=text
--config.data.path=my.txt reruns the ablation on other data). Results go to
experiments/results/<ablation>/ (…-quick/ for --quick): runs.csv,
curves.csv, summary.md and PNG plots; each run trains in its own workdir
under workdirs/. --jobs J trains J runs at a time, each in its own
single-threaded process pinned to one CPU (experiments/scheduler.py); the
numbers depend on neither J nor the machine's core count. --unpinned leaves
the CPUs free, as the runs made before 2026-12-06 were (their rows have no
`cpus` column; on the 2-core machine they reproduce with --unpinned). A
rerun skips runs already in runs.csv and resumes an interrupted one from its
checkpoint. A run with the same config, XLA flags and CPU count as one in
another ablation's results is copied from there, unless --fresh (which,
with --out to a new folder, retrains everything from scratch).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import re
import sys
import time

from absl import logging

from experiments import records, report, run_store, scheduler
from experiments.ablation import Ablation
from experiments.scheduler import RunSpec, Seeds
from moe_jax import cli
from moe_jax.config.default_config import get_default_config
from moe_jax.errors import UserInputError
from moe_jax.train.interrupt import TrainingInterrupted

RESULTS = pathlib.Path(__file__).parent / 'results'


def parse_args(argv):
  """(the runner's flags, the --config overrides as {'moe.top_k': 2, ...}).

  The overrides are parsed by ml_collections.config_flags against the
  default config's field types, as `python -m moe_jax.main` parses them:
  an unknown field or a value of the wrong type is a UserInputError.
  """
  parser = argparse.ArgumentParser(
      prog='python -m experiments.run', description=__doc__.splitlines()[0])
  parser.add_argument('ablation', help='experiments/<ablation>.py')
  parser.add_argument('--seeds', type=int, default=None,
                      help='seeds 0..N-1 (default 3; 2 with --quick)')
  parser.add_argument('--steps', type=int, default=None,
                      help="training steps (default: the ablation's)")
  parser.add_argument('--quick', action='store_true',
                      help='fewer steps and seeds, same tables and plots')
  parser.add_argument('--jobs', type=int, default=None,
                      help='runs trained at a time, one single-threaded '
                      'process each (default 1; use the CPU cores)')
  seeds = parser.add_mutually_exclusive_group()
  seeds.add_argument('--init-seed', type=int, default=None,
                     help='hold the initialisation at this seed: the seeds '
                     'then vary the data order only')
  seeds.add_argument('--data-seed', type=int, default=None,
                     help='hold the data order at this seed: the seeds then '
                     'vary the initialisation only')
  parser.add_argument('--out', default=None, help='results folder')
  parser.add_argument('--variants', default=None,
                      help='comma-separated subset of variants to run now')
  parser.add_argument('--report-only', action='store_true',
                      help='only rebuild summary.md and plots from runs.csv')
  parser.add_argument('--unpinned', action='store_true',
                      help='do not pin each run to one CPU (how runs were '
                      'made before 2026-12-06; the numbers then depend on '
                      "the machine's core count)")
  parser.add_argument('--fresh', action='store_true',
                      help="train every run; copy none from other ablations' "
                      'results (a from-scratch rerun; pair it with --out)')
  args, rest = parser.parse_known_args(argv)
  for item in rest:
    if not item.startswith('--config.') or '=' not in item:
      parser.error(f'unexpected argument {item!r}; overrides look like '
                   '--config.moe.top_k=2')
  return args, cli.config_overrides(rest, get_default_config())


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


def plan_runs(ab: Ablation, *, seeds: Seeds, steps: int, out: pathlib.Path,
              overrides: dict) -> list[RunSpec]:
  """Every (variant, seed) of the ablation, seed-major.

  Seed-major: an ablation stopped part-way holds every variant at the first
  seeds, a paired design, rather than some variants at none.
  """
  return [RunSpec(ab.name, v.name, s, steps, overrides, seeds, str(out))
          for s in range(seeds.count) for v in ab.variants]


def run_ablation(ab: Ablation, *, seeds: Seeds, steps: int,
                 out: pathlib.Path, overrides: dict, command: str,
                 only: list[str] | None = None, reuse: bool = True,
                 jobs: int = 1, pin: bool = False) -> list[dict]:
  """Trains what runs.csv lacks (of `only`'s variants, if given); returns all
  rows. Rebuilds the report. With reuse, a run that another ablation's
  results already hold (same config hash, XLA flags and CPU count) is
  copied, not retrained. pin: every run trains in a worker process pinned
  to one CPU, also at jobs = 1 (scheduler.run_all)."""
  store = run_store.RunStore(out)
  plan = plan_runs(ab, seeds=seeds, steps=steps, out=out, overrides=overrides)
  configs = {(r.variant, r.seed): r.config(ab) for r in plan}
  for (name, s), c in configs.items():
    store.check_same_config(name, s, c)  # Before training anything.
  cpus = scheduler.run_cpus(pin)
  store.check_same_cpus(cpus, pin)
  store.save()  # Keeps rows relabelled from the legacy hash.
  for name in only or ():
    ab.variant(name)  # An unknown name raises KeyError: one error line.
  todo = [r for r in plan if not store.has(r.variant, r.seed)
          and (not only or r.variant in only)]
  stale = store.stale_defaults()
  if stale:
    print(f'warning: some runs in {store.csv_path} used other defaults of '
          "moe_jax/config/default_config.py than today's ("
          + '; '.join(stale) + '); their numbers may not match a rerun.',
          flush=True)
  finished = sum(store.has(r.variant, r.seed) for r in plan)
  print(f'[{ab.name}] {len(plan)} runs ({len(ab.variants)} variants x '
        f'{seeds.count} seeds, {steps} steps); {finished} already in '
        f'{store.csv_path}; {len(todo)} to run now, {jobs} at a time',
        flush=True)
  started = time.perf_counter()
  if ab.prepare is not None and todo:
    ab.prepare()
  to_train = []
  for spec in todo:
    config = configs[spec.variant, spec.seed]
    found = records.find_finished(RESULTS, config, out,
                                  cpus) if reuse else None
    try:
      if found is None:
        raise FileNotFoundError
      row, curves = records.reuse_run(ab, spec.variant, spec.seed, config,
                                      found)
    except FileNotFoundError:  # None found, or its checkpoint is gone.
      to_train.append(spec)
      continue
    store.add(row, curves)
    print(f'[{ab.name}] reused the identical finished run '
          f'{row["reused_from"]} seed {spec.seed}', flush=True)
  if ab.init_run is not None and to_train:
    # Each seed's init run first, so that no two workers train the same one.
    firsts = list({spec.seed: spec for spec in to_train}.values())
    for _ in scheduler.run_all(scheduler.train_init_run, firsts, jobs, ab,
                               pin):
      pass
  runs = scheduler.run_all(scheduler.train, to_train, jobs, ab, pin)
  for i, (spec, (row, curves)) in enumerate(runs):
    row['command'] = command
    store.add(row, curves)
    minutes, left = (time.perf_counter() - started) / 60, len(to_train) - i - 1
    print(f'[{ab.name}] finished {spec.variant} seed {spec.seed} ({i + 1}/'
          f'{len(to_train)}, {minutes:.0f} min so far' +
          (f', ETA {minutes / (i + 1) * left:.0f} min)' if left else ')'),
          flush=True)
    report.write(ab, store.rows(), store.curves(), out)
  rows = store.rows()
  report.write(ab, rows, store.curves(), out)
  print(f'[{ab.name}] done in {(time.perf_counter() - started) / 60:.1f} min;'
        f' summary: {out / "summary.md"}', flush=True)
  return rows


def _cache_compilations(cpus: int) -> None:
  """Seeds of one variant compile the same programs: compile them once.

  JAX's persistent cache only skips recompiling; results are unchanged. Set
  here and in the environment, which worker processes read when they start.
  One folder per CPU count (cpus: what each run may use): XLA:CPU's
  programs for 1 and 2 CPUs differ (scheduler.py) and the cache's key does
  not say so.
  """
  import jax  # pylint: disable=g-import-not-at-top
  options = {'jax_compilation_cache_dir': str(RESULTS / '.xla_cache' /
                                              f'cpus{cpus}'),
             'jax_persistent_cache_min_compile_time_secs': 0.5}
  for name, value in options.items():
    os.environ.setdefault(name.upper(), str(value))
    jax.config.update(name, value)


# The final evaluation of a --quick run: 16 batches (32k bytes) instead of
# the whole held-out split (276 batches), which cost about 15 CPU s of each
# quick run; a quick run checks the pipeline end to end, not the loss.
QUICK_FINAL_EVAL_BATCHES = 16


def quick_overrides(steps: int) -> dict:
  """--quick's config overrides: two evaluations of 4 batches (the curves
  keep their shape) and a short final evaluation, so that a whole ablation
  fits in minutes. Flags given by the user take precedence."""
  return {'train.eval_batches': 4, 'train.eval_every': max(1, steps // 2),
          'train.final_eval_batches': QUICK_FINAL_EVAL_BATCHES}


def _positive(flag: str, value: int | None, default: int) -> int:
  """value, or default when the flag was not given; 0 or less is an error."""
  if value is None:
    return default
  if value < 1:
    raise UserInputError(f'{flag} {value} must be a positive integer; leave '
                         f'{flag} out for the default ({default}).')
  return value


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  logging.set_verbosity(logging.WARNING)
  try:
    args, overrides = parse_args(argv)
    ab = load_ablation(args.ablation)
    seeds = Seeds(_positive('--seeds', args.seeds, 2 if args.quick else 3),
                  init=args.init_seed, data=args.data_seed)
    steps = _positive('--steps', args.steps,
                      ab.quick_steps if args.quick else ab.steps)
    jobs = _positive('--jobs', args.jobs, 1)
    out = pathlib.Path(args.out) if args.out else RESULTS / (
        ab.name + ('-quick' if args.quick else ''))
    if args.quick:
      overrides = {**quick_overrides(steps), **overrides}
    if args.report_only:
      store = run_store.RunStore(out)
      report.write(ab, store.rows(), store.curves(), out)
      print(f'summary: {out / "summary.md"}')
      return 0
    plan_runs(ab, seeds=seeds, steps=steps, out=out,
              overrides=overrides)[0].config(ab)  # A bad override fails here,
    # before this process's environment and jax settings are touched.
    scheduler.use_run_flags()  # Before jax starts, here and in the workers.
    scheduler.use_allocator_env()  # For the workers, which start after this.
    pin = not args.unpinned
    _cache_compilations(scheduler.run_cpus(pin))
    run_ablation(ab, seeds=seeds, steps=steps, out=out, overrides=overrides,
                 command='python -m experiments.run ' + ' '.join(argv),
                 only=args.variants.split(',') if args.variants else None,
                 reuse=not args.fresh, jobs=jobs, pin=pin)
  except (UserInputError, KeyError) as e:
    # A KeyError's str() is its message in quotes.
    message = str(e).strip(chr(39)) if isinstance(e, KeyError) else str(e)
    print(f'error: {message}', file=sys.stderr)
    return 2
  except TrainingInterrupted as e:
    # The run saved a checkpoint; the same command resumes the ablation.
    print(f'stopped: {e}', file=sys.stderr)
    return e.exit_code
  return 0


if __name__ == '__main__':
  sys.exit(main())
