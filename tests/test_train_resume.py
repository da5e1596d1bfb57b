"""Resuming training: exact continuation, SIGKILL recovery, NaN handling.

All runs here share one experiment: the tiny GShard top-2 config (its random
second-expert policy draws from the per-step key, so a resume that drew
different routing noise would show) for NUM_STEPS steps. The learning-rate schedule depends
on train.num_steps, so an interrupted run and its reference must both be
configured with the same num_steps and be stopped part-way, not configured
shorter. Only host-side settings (checkpoint_every, log_every) differ between
runs; they change neither the parameters nor the metric values.

A persistent compilation cache shared by the in-process runs and the CLI
subprocesses keeps each run to seconds; it changes nothing that is computed.
"""

import contextlib
import io
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.data import pipeline
from moe_jax.train import step as step_lib
from moe_jax.train import trainer
import testlib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = 'configs/gshard_top2.py'
NUM_STEPS = 40
# Settings every run of this module shares (flattened, as on the CLI).
BASE = {'train.num_steps': NUM_STEPS, 'train.log_every': 1,
        'train.eval_every': 5}
WALL_CLOCK_FIELDS = trainer.TIMING_FIELDS


# ---------------------------------------------------------------- helpers --

@pytest.fixture(scope='module', autouse=True)
def _cache(compilation_cache_on):
  del compilation_cache_on  # Active for the whole module.


def _config(**overrides):
  """The module's experiment, locked (a typo fails), plus `overrides`."""
  return testlib.tiny_config(CONFIG_FILE, {**BASE, **overrides})


def _train(config, workdir):
  """Runs train_and_evaluate; returns its stdout."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    trainer.train_and_evaluate(config, str(workdir))
  return out.getvalue()


def _records(workdir):
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [json.loads(line) for line in lines]


def _without_wall_clock(records):
  return [{k: v for k, v in r.items() if k not in WALL_CLOCK_FIELDS}
          for r in records]


_checkpoint_steps = testlib.checkpoint_steps
_saved_state = testlib.saved_state


def _assert_bitwise_equal(a, b):
  paths_a, tree_a = zip(*jax.tree.leaves_with_path(a))
  paths_b, tree_b = zip(*jax.tree.leaves_with_path(b))
  assert paths_a == paths_b
  for path, x, y in zip(paths_a, tree_a, tree_b):
    x, y = np.asarray(x), np.asarray(y)
    assert (x.dtype, x.shape) == (y.dtype, y.shape), path
    assert x.tobytes() == y.tobytes(), (
        f'{jax.tree_util.keystr(path)} differs; max |diff| '
        f'{np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))}')


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run every resumed run must reproduce."""
  workdir = tmp_path_factory.mktemp('reference')
  _train(_config(**{'train.checkpoint_every': NUM_STEPS}), workdir)
  return workdir


class _Interrupted(Exception):
  """Stands for a crash in the middle of training."""


# ------------------------------------------------------------------ tests --


@pytest.mark.slow
def test_resume_after_interruption_is_exact(reference, tmp_path, monkeypatch,
                                            capsys):
  """Stop a run after 23 of 40 steps, resume it, compare with `reference`.

  The stop is an exception raised when the batch of step 24 is fetched: the
  last checkpoint is at step 20 and metric lines for steps 21-23 were written
  after it, as after a crash. (Resuming a shorter run with a larger num_steps
  would instead change the learning-rate schedule, so no such run could
  match the reference.) Nothing in the library changes for this.
  """
  config = _config(**{'train.checkpoint_every': 10})
  real_batch_at = pipeline.BatchIterator.batch_at
  crash_at = 23

  def batch_at(self, step):
    if step == crash_at:
      raise _Interrupted(step)
    return real_batch_at(self, step)

  with monkeypatch.context() as patch:
    patch.setattr(pipeline.BatchIterator, 'batch_at', batch_at)
    with pytest.raises(_Interrupted):
      _train(config, tmp_path)
  assert _checkpoint_steps(tmp_path) == [10, 20]
  assert max(r['step'] for r in _records(tmp_path)) == crash_at
  capsys.readouterr()

  stdout = _train(config, tmp_path)
  assert 'resumed from step 20' in stdout

  _assert_bitwise_equal(_saved_state(tmp_path, NUM_STEPS),
                        _saved_state(reference, NUM_STEPS))
  assert _without_wall_clock(_records(tmp_path)) == _without_wall_clock(
      _records(reference))


def _cli(workdir, cache_dir):
  """The CLI command and environment of the module's experiment."""
  overrides = {**BASE, 'train.checkpoint_every': 2}
  command = [sys.executable, '-m', 'moe_jax.main',
             f'--config={CONFIG_FILE}:tiny', f'--workdir={workdir}']
  command += [f'--config.{k}={v}' for k, v in overrides.items()]
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return command, env


@pytest.mark.slow
def test_sigkill_then_rerun_matches_uninterrupted_run(reference, tmp_path,
                                                      cache_dir):
  command, env = _cli(tmp_path, cache_dir)
  kill_after = 10  # Kill once a checkpoint at or after this step is on disk.
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 240
    while not any(s >= kill_after for s in _checkpoint_steps(tmp_path)):
      assert proc.poll() is None, (
          f'the run ended before it was killed:\n{proc.communicate()}')
      assert time.monotonic() < deadline, 'no checkpoint within 240 s'
      time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate(timeout=60)
  # Killed mid-run, not finished: the rerun must really resume.
  assert proc.returncode == -signal.SIGKILL
  steps = _checkpoint_steps(tmp_path)
  assert steps and kill_after <= steps[-1] < NUM_STEPS, steps

  rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr
  assert f'resumed from step {steps[-1]}' in rerun.stdout, rerun.stdout
  _assert_bitwise_equal(_saved_state(tmp_path, NUM_STEPS),
                        _saved_state(reference, NUM_STEPS))
  assert _without_wall_clock(_records(tmp_path)) == _without_wall_clock(
      _records(reference))


@pytest.mark.slow
@pytest.mark.parametrize('bad_step, last_good', [
    (8, 4),  # A checkpoint step between log steps: caught before the save.
    (9, 8),  # A log step: caught when its metrics are fetched.
    (11, 8),  # Neither: caught one step late, still named as step 11.
])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    bad_step, last_good, tmp_path, monkeypatch):
  config = _config(**{'train.log_every': 3, 'train.checkpoint_every': 4})
  # Batches from bad_step on carry a negative target byte, which the
  # wrapped step turns into a NaN added to the loss and the parameters, as
  # a divergence would. Making the poison data rather than a constant lets
  # all cases share one compiled step (and the batch keeps its structure).
  real_batch_at = pipeline.BatchIterator.batch_at
  real_train_step = step_lib.train_step

  def batch_at(self, step):
    batch = real_batch_at(self, step)
    if step + 1 >= bad_step:
      batch = dict(batch, targets=np.full_like(batch['targets'], -1))
    return batch

  def poisoned_train_step(state, batch, **kwargs):
    poisoned = jnp.any(batch['targets'] < 0)
    poison = jnp.where(poisoned, jnp.nan, 0.0).astype(jnp.float32)
    batch = dict(batch, targets=jnp.maximum(batch['targets'], 0))
    state, metrics = real_train_step(state, batch, **kwargs)
    params = jax.tree.map(lambda p: p + poison.astype(p.dtype), state.params)
    return state.replace(params=params), dict(
        metrics, loss=metrics['loss'] + poison,
        state_finite=metrics['state_finite'] & ~poisoned)

  monkeypatch.setattr(pipeline.BatchIterator, 'batch_at', batch_at)
  monkeypatch.setattr(step_lib, 'train_step', poisoned_train_step)
  with pytest.raises(trainer.NonFiniteLossError) as error:
    _train(config, tmp_path)
  message = str(error.value)
  assert f'at step {bad_step};' in message
  assert f'(step {last_good})' in message

  steps = _checkpoint_steps(tmp_path)
  assert steps and steps[-1] == last_good, steps
  assert not list((tmp_path / 'checkpoints').glob('*tmp*')), (
      'a save was left in progress')
  saved = _saved_state(tmp_path, last_good)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved['params']))
  records = _records(tmp_path)
  assert all(math.isfinite(r['loss']) for r in records if 'loss' in r)
  assert max(r['step'] for r in records) < bad_step
