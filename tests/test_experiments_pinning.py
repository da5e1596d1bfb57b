"""Each ablation run on one CPU (experiments/scheduler.py) and what that
means for reusing a finished run."""

import os

import pytest
from _worker_cpus import worker_cpus

from configs import switch_top1
from experiments import records, run_hash, run_store, scheduler
from moe_jax.errors import UserInputError

pinnable = pytest.mark.skipif(not scheduler.can_pin(),
                              reason='the OS cannot pin a process to a CPU')


@pinnable
def test_pinned_workers_each_get_one_cpu_in_turn():
  cpus = sorted(os.sched_getaffinity(0))
  seen = [s for _, s in scheduler.run_all(worker_cpus, [1.0] * 4,
                                          jobs=2, ab=None, pin=True)]
  assert all(len(s) == 1 and s <= set(cpus) for s in seen)
  if len(cpus) >= 2:  # Two workers, two different CPUs.
    assert len(set().union(*seen)) == 2
  # Pinned, even jobs=1 trains in a worker, never in this process.
  one = [s for _, s in scheduler.run_all(worker_cpus, [0],
                                         jobs=1, ab=None, pin=True)]
  assert one == [{cpus[0]}]
  assert sorted(os.sched_getaffinity(0)) == cpus  # This process untouched.


@pinnable
def test_pin_takes_the_slots_cpu_modulo_the_count():
  cpus = sorted(os.sched_getaffinity(0))
  try:
    assert scheduler.pin_to_one_cpu(len(cpus) + 1, cpus) == cpus[1 % len(cpus)]
    assert os.sched_getaffinity(0) == {cpus[1 % len(cpus)]}
  finally:
    os.sched_setaffinity(0, cpus)


def test_a_finished_run_is_reused_only_with_the_same_threading(
    tmp_path, monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', scheduler.RUN_XLA_FLAGS)
  config = switch_top1.get_config()
  row = {'variant': 'v', 'seed': 0, 'status': 'ok',
         'config_hash': run_hash.config_hash(config),
         'xla_flags': scheduler.RUN_XLA_FLAGS}
  for name, extra in (('old', {}), ('two', {'cpus': 2}), ('one', {'cpus': 1})):
    store = run_store.RunStore(tmp_path / name)
    store.add({**row, **extra}, [])
    store.save()
  exclude = tmp_path / 'mine'
  found = records.find_finished(tmp_path, config, exclude, cpus=1)
  assert found is not None and found[2] == tmp_path / 'one' / 'workdirs/v/seed0'
  found = records.find_finished(tmp_path, config, exclude, cpus=2)
  assert found[2] == tmp_path / 'two' / 'workdirs/v/seed0'
  # A row without a CPU count (made before pinning) is never reused, and
  # other XLA flags make another computation.
  assert records.find_finished(tmp_path, config, exclude, cpus=3) is None
  monkeypatch.setenv('XLA_FLAGS', '')
  assert records.find_finished(tmp_path, config, exclude, cpus=1) is None


def test_one_folder_holds_runs_of_one_cpu_count(tmp_path):
  store = run_store.RunStore(tmp_path)
  store.add({'variant': 'v', 'seed': 0}, [])  # Before 2026-12-06: no count.
  store.check_same_cpus(2, pinned=False)
  with pytest.raises(UserInputError, match='unpinned, before 2026-12-06.*'
                     'add --unpinned'):
    store.check_same_cpus(1, pinned=True)
  store.add({'variant': 'v', 'seed': 1, 'cpus': 1}, [])
  store = run_store.RunStore(tmp_path)  # As read back from runs.csv.
  with pytest.raises(UserInputError, match=r'on 1 CPU\(s\) each.*'
                     'drop --unpinned'):
    store.check_same_cpus(2, pinned=False)
  pinned = run_store.RunStore(tmp_path / 'p')
  pinned.add({'variant': 'v', 'seed': 0, 'cpus': 1}, [])
  pinned.check_same_cpus(1, pinned=True)


def test_allocator_env_is_a_default_that_a_user_can_override_or_refuse(
    monkeypatch):
  for key in scheduler.ALLOCATOR_ENV:
    monkeypatch.delenv(key, raising=False)
  monkeypatch.delenv('MOE_JAX_KEEP_ALLOCATOR', raising=False)
  monkeypatch.setenv('MALLOC_ARENA_MAX', '4')  # The user's own value wins.
  scheduler.use_allocator_env()
  assert os.environ['MALLOC_ARENA_MAX'] == '4'
  assert os.environ['MALLOC_MMAP_MAX_'] == '0'
  assert os.environ['MALLOC_TRIM_THRESHOLD_'] == str(1 << 34)
  for key in scheduler.ALLOCATOR_ENV:
    monkeypatch.delenv(key, raising=False)
  monkeypatch.setenv('MOE_JAX_KEEP_ALLOCATOR', '1')
  scheduler.use_allocator_env()
  assert not any(key in os.environ for key in scheduler.ALLOCATOR_ENV)
