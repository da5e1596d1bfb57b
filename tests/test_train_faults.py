"""Faults during training: divergence, damaged checkpoints, Ctrl-C/SIGTERM.

Each test checks a promise about what is on disk afterwards: no checkpoint
holds a non-finite state, a damaged checkpoint never blocks a rerun, and an
interrupted run resumes to exactly the state of an uninterrupted one.
All runs use the tiny switch_top1 config and the shared compilation cache.
"""

import contextlib
import io
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from moe_jax.errors import UserInputError
from moe_jax.train import trainer
import testlib

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG_FILE = 'configs/switch_top1.py'

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module', autouse=True)
def _cache(compilation_cache_on):
  del compilation_cache_on  # Active for the whole module.


def _config(**overrides):
  return testlib.tiny_config(CONFIG_FILE, overrides)


def _train(config, workdir):
  with contextlib.redirect_stdout(io.StringIO()) as out:
    trainer.train_and_evaluate(config, str(workdir))
  return out.getvalue()


_steps = testlib.checkpoint_steps
_saved = testlib.saved_state


def _all_finite(tree):
  return all(np.all(np.isfinite(x)) for x in jax.tree.leaves(tree)
             if np.issubdtype(np.asarray(x).dtype, np.floating))


def _assert_same_state(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A finished 6-step run: checkpoints 3 and 6."""
  workdir = tmp_path_factory.mktemp('trained')
  _train(_config(), workdir)
  assert _steps(workdir) == [3, 6]
  return workdir


# ------------------------------------------------------------ divergence --

def test_huge_learning_rate_saves_no_nan_checkpoint(tmp_path):
  # The case: the loss at step 3 was still finite, but the update
  # made every parameter NaN, and that state was saved as step 3.
  config = _config(**{'optim.learning_rate': 1e30, 'train.num_steps': 30})
  with pytest.raises(trainer.NonFiniteLossError) as error:
    _train(config, tmp_path)
  assert 'No checkpoint had been saved' in str(error.value)
  assert _steps(tmp_path) == []


def test_divergence_after_resume_names_the_last_good_checkpoint(
    trained, tmp_path):
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  config = _config(**{'optim.learning_rate': 1e30, 'train.num_steps': 30,
                      'train.checkpoint_every': 1})
  with pytest.raises(trainer.NonFiniteLossError) as error:
    _train(config, workdir)
  message = str(error.value)
  bad = int(message.split('diverged at step ')[1].split(';')[0])
  # Step 7's update leaves huge but finite parameters, which may be saved;
  # what must hold is that every checkpoint is finite, none is at or after
  # the bad step, and the message names the newest one.
  steps = _steps(workdir)
  assert steps[-1] < bad and f'(step {steps[-1]})' in message, message
  assert all(_all_finite(_saved(workdir, step)) for step in steps)


# ---------------------------------------------------- damaged checkpoints --

def _truncate_data(state):
  for f in (state / 'ocdbt.process_0' / 'd').iterdir():
    f.write_bytes(f.read_bytes()[:10])


def _delete_data(state):
  for f in (state / 'ocdbt.process_0' / 'd').iterdir():
    f.unlink()


def _truncate_manifest(state):
  f = state / 'manifest.ocdbt'
  f.write_bytes(f.read_bytes()[:5])


DAMAGE = {
    'truncated_data': _truncate_data,
    'deleted_data': _delete_data,
    'deleted_state_metadata': lambda state: (state / '_METADATA').unlink(),
    'deleted_meta_metadata': (
        lambda state: (state.parent / 'meta' / 'metadata').unlink()),
    'truncated_manifest': _truncate_manifest,
}


@pytest.mark.parametrize('damage', list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_and_is_kept(
    damage, trained, tmp_path, capsys):
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  DAMAGE[damage](workdir / 'checkpoints' / '6' / 'state')
  capsys.readouterr()

  stdout = _train(_config(), workdir)

  assert 'resumed from step 3' in stdout
  warnings = [line for line in capsys.readouterr().err.splitlines()
              if line.startswith('warning:')]
  assert len(warnings) == 1 and 'checkpoint 6' in warnings[0], warnings
  assert (workdir / 'checkpoints' / '6.damaged-1' / 'state').is_dir()
  # Steps 4-6 were trained again and saved over nothing: the same state.
  assert _steps(workdir) == [3, 6]
  _assert_same_state(_saved(workdir, 6), _saved(trained, 6))


def test_damaged_checkpoint_on_the_cli_prints_one_warning(trained, tmp_path):
  # A missing manifest made TensorStore's late reads print 'RuntimeError:
  # Event loop is closed' tracebacks around the (correct) recovery.
  workdir = tmp_path / 'run'
  shutil.copytree(trained, workdir)
  (workdir / 'checkpoints' / '6' / 'state' / 'manifest.ocdbt').unlink()
  result = subprocess.run(
      [sys.executable, '-m', 'moe_jax.main', f'--config={CONFIG_FILE}:tiny',
       f'--workdir={workdir}'], cwd=REPO, capture_output=True, text=True,
      timeout=180, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr
  assert 'resumed from step 3' in result.stdout
  lines = [l for l in result.stderr.splitlines()
           if not l.startswith(('step ', 'eval at step '))]
  assert len(lines) == 1 and lines[0].startswith('warning: skipped checkpoint '
                                                 '6'), result.stderr


def test_checkpoint_past_num_steps_is_refused(trained):
  with pytest.raises(UserInputError) as error:
    _train(_config(**{'train.num_steps': 4}), trained)
  assert 'step 6' in str(error.value) and 'num_steps=4' in str(error.value)


# ---------------------------------------------------------------- signals --

# Long enough to be interrupted mid-run; checkpoints only at 40s and at the
# end, so the interrupt's own save is what the rerun resumes from.
SIGNAL_RUN = {'train.num_steps': 150, 'train.log_every': 1,
              'train.eval_every': 150, 'train.checkpoint_every': 40}


@pytest.fixture(scope='module')
def signal_reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('signal_reference')
  _train(_config(**SIGNAL_RUN), workdir)
  return workdir


def _records(workdir):
  lines = (pathlib.Path(workdir) / 'metrics.jsonl').read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items()
           if k not in trainer.TIMING_FIELDS} for line in lines]


def _start_cli(workdir, cache_dir):
  command = [sys.executable, '-m', 'moe_jax.main',
             f'--config={CONFIG_FILE}:tiny', f'--workdir={workdir}']
  command += [f'--config.{k}={v}' for k, v in SIGNAL_RUN.items()]
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             JAX_COMPILATION_CACHE_DIR=cache_dir,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  return command, env, subprocess.Popen(
      command, cwd=REPO, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)


def _wait_for_step(proc, workdir, step):
  """Waits until metrics.jsonl holds `step` and checkpoint 40 is finished
  (orbax saves in the background), so a rerun always has one to resume."""
  path = pathlib.Path(workdir) / 'metrics.jsonl'
  deadline = time.monotonic() + 120
  while not (path.exists() and f'"step": {step},' in path.read_text() and
             40 in _steps(workdir)):
    assert proc.poll() is None, proc.communicate()
    assert time.monotonic() < deadline, 'no training step within 120 s'
    time.sleep(0.02)


@pytest.mark.parametrize('signum, times', [
    (signal.SIGTERM, 1),  # Finish the step, save, exit 143.
    (signal.SIGINT, 1),  # Ctrl-C: the same, exit 130.
    (signal.SIGINT, 2),  # A second Ctrl-C: exit at once, nothing torn.
])
def test_signal_saves_and_the_rerun_matches_an_uninterrupted_run(
    signum, times, signal_reference, tmp_path, cache_dir):
  command, env, proc = _start_cli(tmp_path, cache_dir)
  try:
    _wait_for_step(proc, tmp_path, 50)
    proc.send_signal(signum)
    if times == 2:
      # Signals sent together merge into one, so repeat until it is gone:
      # the second one lands while the first's step or save is running.
      deadline = time.monotonic() + 60
      while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
        proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  assert proc.returncode == 128 + signum, stderr
  assert 'Traceback' not in stderr, stderr
  last = stderr.splitlines()[-1]
  if times == 1:
    assert last.startswith(f'{signum.name} received: stopped after step'), (
        last)
    stopped = int(last.split('after step ')[1].split()[0])
    assert 50 <= stopped < 150 and stopped in _steps(tmp_path)
  else:
    assert 'again: exiting now' in last, last

  rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
  assert rerun.returncode == 0, rerun.stderr
  assert 'resumed from step' in rerun.stdout, rerun.stdout
  _assert_same_state(_saved(tmp_path, 150), _saved(signal_reference, 150))
  assert _records(tmp_path) == _records(signal_reference)
