"""Which runs an ablation needs, and training them in parallel processes.

Every run trains on one thread and, since 2026-12-06, on one CPU, whether
one process or several train at a time:

  * RUN_XLA_FLAGS makes the matmuls single-threaded;
  * pin_to_one_cpu() restricts the process to one CPU before jax's backend
    starts. XLA:CPU sizes its thread pool from the CPUs a process may use at
    that moment and splits its loop fusions over the pool; with 2 CPUs the
    regime model's parameters after 43 steps differed from a 1-CPU process's
    by 2.4e-7 (benchmarks/cpu_count_numerics.py), so without the pin a
    run's numbers would depend on the machine's core count. Pinned, they
    depend on neither --jobs nor the machine, and no process keeps a second
    thread busy (5% more tokens per second at --jobs 2 on a quiet 2-core
    machine; benchmarks/ablation_throughput.py).

With --jobs equal to the cores, the cores are used by whole runs instead of
by threads fighting over one small model's matmuls.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import multiprocessing
import os
import pathlib

from experiments.ablation import Ablation, apply_overrides

# One thread per run: see the module docstring. A user's own XLA_FLAGS win
# (and are recorded in each run's row). Only the first flag does anything:
# XLA ignores `intra_op_parallelism_threads=1` (not a flag: no dashes) and,
# with it, every flag after it. The string is kept as the ablations of
# 2026-11 recorded it, so rows made with either read the same.
RUN_XLA_FLAGS = ('--xla_cpu_multi_thread_eigen=false '
                 'intra_op_parallelism_threads=1')


# glibc's allocator for the worker processes: one arena, no mmap'd chunks,
# no trimming. With its defaults each thread's arena hands freed buffers back
# to the kernel, and XLA:CPU's kernels fault them in again every step: a
# pinned worker spent about a third of its CPU time in the kernel on ~200k
# minor page faults a second. The numbers do not change (only where buffers
# live): benchmarks/malloc_arenas.py checks that and measures the saving.
ALLOCATOR_ENV = {'MALLOC_ARENA_MAX': '1', 'MALLOC_MMAP_MAX_': '0',
                 'MALLOC_TRIM_THRESHOLD_': str(1 << 34)}


def use_allocator_env() -> None:
  """Sets ALLOCATOR_ENV for the processes started from here on (glibc reads
  it when a process starts, so it cannot change this one). A user's own
  MALLOC_* values win; MOE_JAX_KEEP_ALLOCATOR=1 leaves glibc's defaults."""
  if os.environ.get('MOE_JAX_KEEP_ALLOCATOR'):
    return
  for key, value in ALLOCATOR_ENV.items():
    os.environ.setdefault(key, value)


def use_run_flags() -> str:
  """Sets XLA_FLAGS for this process and its workers (before jax starts)."""
  os.environ.setdefault('XLA_FLAGS', RUN_XLA_FLAGS)
  return os.environ['XLA_FLAGS']


def can_pin() -> bool:
  return hasattr(os, 'sched_setaffinity')  # Linux; not macOS or Windows.


def process_cpus() -> int:
  """How many CPUs this process may run on (what a run's row records)."""
  return len(os.sched_getaffinity(0)) if can_pin() else (os.cpu_count() or 1)


def run_cpus(pin: bool) -> int:
  """The CPU count each run of this process's ablation trains with: 1 when
  pinned (where the OS can pin), else every CPU this process may use."""
  return 1 if pin and can_pin() else process_cpus()


def pin_to_one_cpu(slot: int, cpus: list[int] | None = None) -> int | None:
  """Restricts this process to one CPU: run slot `slot` takes `cpus` (by
  default the CPUs this process may use) in turn. Returns the CPU, or None
  where the OS cannot pin.

  Call it before jax's backend starts (see the module docstring): a pin set
  later leaves XLA's thread pool, and so the numbers, as they were.
  """
  if not can_pin():
    return None
  cpus = cpus or sorted(os.sched_getaffinity(0))
  cpu = cpus[slot % len(cpus)]
  os.sched_setaffinity(0, {cpu})
  return cpu


def _start_worker(counter, cpus: list[int] | None) -> None:
  """A worker process's first act: take the next slot's CPU (cpus=None:
  unpinned). Runs before the worker's jax backend starts."""
  if cpus is None:
    return
  with counter.get_lock():
    slot = counter.value
    counter.value += 1
  pin_to_one_cpu(slot, cpus)


@dataclasses.dataclass(frozen=True)
class Seeds:
  """How the index `seed` of a run maps to its init and data-order seeds.

  By default both are the index. --data-seed K holds the data order at K
  (the seeds then vary the initialisation only); --init-seed K holds the
  initialisation at K (the seeds then vary the data order only).
  """
  count: int
  init: int | None = None
  data: int | None = None

  def of(self, s: int) -> tuple[int, int]:
    """(init seed, data seed) of run index s."""
    return (s if self.init is None else self.init,
            s if self.data is None else self.data)

  def overrides(self, s: int) -> dict:
    init, data = self.of(s)
    # data.seed stays unset when it equals the seed, so such runs keep the
    # config hash they had before data.seed existed.
    return {'seed': init, **({'data.seed': data} if data != init else {})}


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """Everything a worker process needs to rebuild and train one run."""
  ablation: str  # Module name under experiments/.
  variant: str
  seed: int
  steps: int
  overrides: dict
  seeds: Seeds
  out: str

  def config(self, ab: Ablation):
    """The config hashed into runs.csv (train.init_from relative to out)."""
    c = ab.base(self.steps)
    v = ab.variant(self.variant)
    apply_overrides(c, {**v.overrides, **self.overrides,
                        **self.seeds.overrides(self.seed)})
    if ab.init_run is not None:
      apply_overrides(c, {'train.init_from': str(init_workdir(ab, self.seed))})
    return c

  def run_config(self, ab: Ablation):
    """The config that trains: config() with the init run's real path."""
    c = self.config(ab)
    if ab.init_run is not None:
      apply_overrides(c, {'train.init_from': str(
          pathlib.Path(self.out) / init_workdir(ab, self.seed))})
    return c

  def workdir(self) -> pathlib.Path:
    return pathlib.Path(self.out) / 'workdirs' / self.variant / (
        f'seed{self.seed}')


def init_workdir(ab: Ablation, seed: int) -> pathlib.Path:
  """Where ab.init_run trains for `seed`, relative to the results folder."""
  return pathlib.Path('workdirs') / ab.init_run.name / f'seed{seed}'


def _load(name: str) -> Ablation:
  from experiments import run  # pylint: disable=g-import-not-at-top
  return run.load_ablation(name)


def train_init_run(spec: RunSpec, ab: Ablation | None = None) -> None:
  """Trains (or finishes) ab.init_run for spec.seed, unless it is done.

  ab: the ablation; None loads it by name (in a worker process).
  """
  # Slow imports.
  from moe_jax.train.checkpoint import saved_steps  # pylint: disable=g-import-not-at-top
  from moe_jax.train.trainer import train_and_evaluate  # pylint: disable=g-import-not-at-top
  ab = ab or _load(spec.ablation)
  workdir = pathlib.Path(spec.out) / init_workdir(ab, spec.seed)
  if spec.steps in saved_steps(workdir):
    return
  print(f'[{ab.name}] training {ab.init_run.name} seed {spec.seed}, which '
        'the variants start from', flush=True)
  init = ab.base(spec.steps)
  apply_overrides(init, {**ab.init_run.overrides, **spec.overrides,
                         **spec.seeds.overrides(spec.seed)})
  train_and_evaluate(init, str(workdir))


def train(spec: RunSpec,
          ab: Ablation | None = None) -> tuple[dict, list[dict]]:
  """Trains (or resumes) one run; returns its runs.csv row and curves.

  ab: the ablation; None loads it by name (in a worker process).
  """
  from experiments import records  # pylint: disable=g-import-not-at-top
  from moe_jax.train.trainer import NonFiniteLossError  # Slow import.
  ab = ab or _load(spec.ablation)
  config, workdir = spec.config(ab), spec.workdir()
  run_config = spec.run_config(ab)
  try:
    row = records.train_run(ab, spec.variant, spec.seed, config, workdir,
                            run_config)
  except NonFiniteLossError as e:
    row = records.diverged_row(spec.variant, spec.seed, config, str(e))
  init_seed, data_seed = spec.seeds.of(spec.seed)
  row.update(init_seed=init_seed, data_seed=data_seed)
  return row, records.read_curves(workdir, spec.variant, spec.seed)


def run_all(fn, specs: list[RunSpec], jobs: int, ab: Ablation,
            pin: bool = False):
  """Yields (spec, fn(spec)) as runs finish, `jobs` processes at a time.

  Unpinned, jobs = 1 trains in this process, with `ab` as given. Otherwise
  each worker is a fresh process (spawned, so no jax state is inherited)
  that loads the ablation by name and trains one run at a time; with `pin`,
  worker i runs on CPU i of this process's CPUs (modulo their count), so
  even jobs = 1 trains in a worker: this process's jax may have started. A
  worker's exception (e.g. TrainingInterrupted) propagates here after the
  runs already started have finished or saved.
  """
  if not specs:
    return
  if not pin and (jobs <= 1 or len(specs) <= 1):
    for spec in specs:
      yield spec, fn(spec, ab)
    return
  context = multiprocessing.get_context('spawn')
  cpus = sorted(os.sched_getaffinity(0)) if pin and can_pin() else None
  with concurrent.futures.ProcessPoolExecutor(
      max_workers=min(jobs, len(specs)), mp_context=context,
      initializer=_start_worker,
      initargs=(context.Value('i', 0), cpus)) as pool:
    futures = {pool.submit(fn, spec): spec for spec in specs}
    try:
      for future in concurrent.futures.as_completed(futures):
        yield futures[future], future.result()
    except BaseException:
      for future in futures:
        future.cancel()  # Runs not started yet; started ones save and stop.
      raise
