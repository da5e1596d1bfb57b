"""Two processes joined by jax.distributed train like one process.

Two CLI processes on localhost, each with 2 CPU devices, form one (1,4,1)
expert-parallel mesh (so every all-to-all crosses processes) and train the
tiny switch config for a few steps. A single process with 4 devices runs the
same experiment. Their losses and final parameters must agree.

Every process has a deadline and is killed in `finally`, so a hung
rendezvous or collective fails the test instead of hanging CI.
"""

import json
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from testlib import multi_device_env

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 4
FLAGS = ['--config=configs/switch_top1.py:tiny', '--config.mesh.shape=(1,4,1)',
         '--config.batch_size=8', f'--config.train.num_steps={NUM_STEPS}',
         '--config.train.log_every=1',
         f'--config.train.eval_every={NUM_STEPS}',
         f'--config.train.checkpoint_every={NUM_STEPS}']
TIMEOUT_S = 240
RTOL = 1e-5

pytestmark = pytest.mark.slow


def _env(num_devices):
  env = multi_device_env(num_devices, fast_compile=True)
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES',
               'JAX_PROCESS_ID'):
    env.pop(name, None)  # Only the flags below decide who joins.
  return env


def _free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _run_all(commands, log_dir: pathlib.Path, name: str):
  """Runs (argv, env) commands concurrently; returns their (rc, log text).

  Each one's output goes to log_dir/<name>_<i>.log (a file, not a pipe: a
  full pipe would block a process that the others wait for).

  Fails the test if any is still running after TIMEOUT_S; all are killed on
  the way out whatever happens.
  """
  procs, logs = [], []
  try:
    for i, (argv, env) in enumerate(commands):
      log = open(log_dir / f'{name}_{i}.log', 'w+')
      logs.append(log)
      procs.append(subprocess.Popen(argv, cwd=REPO, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, text=True))
    deadline = time.monotonic() + TIMEOUT_S
    for proc in procs:
      try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
      except subprocess.TimeoutExpired:
        pytest.fail(f'a process ran past {TIMEOUT_S} s: {proc.args}')
    results = []
    for proc, log in zip(procs, logs):
      log.seek(0)
      results.append((proc.returncode, log.read()))
    return results
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    for log in logs:
      log.close()


def _cli(workdir, *extra):
  return [sys.executable, '-m', 'moe_jax.main', *FLAGS, f'--workdir={workdir}',
          *extra]


def _losses(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return {r['step']: r['loss'] for r in map(json.loads, lines) if 'loss' in r}


def _final_state(workdir):
  """The last checkpoint's TrainState as host arrays, read on one device."""
  path = workdir / 'checkpoints' / str(NUM_STEPS) / 'state'
  checkpointer = ocp.StandardCheckpointer()
  metadata = checkpointer.metadata(path).item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      metadata)
  state = checkpointer.restore(path, target)
  checkpointer.close()
  return {jax.tree_util.keystr(p, simple=True, separator='/'): np.asarray(v)
          for p, v in jax.tree.leaves_with_path(state)}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """(two-process workdir, one-process workdir), both trained."""
  base = tmp_path_factory.mktemp('multihost')
  multi, single = base / 'two_processes', base / 'one_process'
  address = f'127.0.0.1:{_free_port()}'
  results = _run_all(
      [(_cli(multi, f'--coordinator_address={address}', '--num_processes=2',
             f'--process_id={i}'), _env(2)) for i in range(2)], base,
      'two_processes')
  for i, (rc, log) in enumerate(results):
    assert rc == 0, f'process {i} exited with {rc}:\n{log[-5000:]}'
  # The same experiment in one process with the same 4 devices in total.
  (rc, log), = _run_all([(_cli(single), _env(4))], base, 'one_process')
  assert rc == 0, log[-5000:]
  return multi, single


def test_two_processes_form_one_mesh(runs):
  multi, _ = runs
  # Process 0 alone writes metrics, every step once: the processes did not
  # train two separate models side by side.
  lines = (multi / 'metrics.jsonl').read_text().splitlines()
  steps = [json.loads(line)['step'] for line in lines
           if 'loss' in json.loads(line)]
  assert steps == list(range(1, NUM_STEPS + 1))
  assert (multi / 'checkpoints' / str(NUM_STEPS)).is_dir()


def test_two_processes_match_one_process(runs):
  multi, single = runs
  want, have = _losses(single), _losses(multi)
  assert sorted(have) == sorted(want) == list(range(1, NUM_STEPS + 1))
  np.testing.assert_allclose([have[s] for s in sorted(want)],
                             [want[s] for s in sorted(want)], rtol=RTOL)
  want, have = _final_state(single), _final_state(multi)
  assert sorted(have) == sorted(want)
  assert any('ffn/wi' in k and want[k].ndim == 3 for k in want)  # Experts.
  for key in want:
    w, h = want[key], have[key]
    assert (h.dtype, h.shape) == (w.dtype, w.shape), key
    if w.dtype.kind != 'f':
      np.testing.assert_array_equal(h, w, err_msg=key)
    else:
      np.testing.assert_allclose(h, w, rtol=RTOL,
                                 atol=RTOL * float(np.max(np.abs(w))),
                                 err_msg=key)


def test_only_process_0_prints_the_summary(runs):
  multi, _ = runs
  logs = [(multi.parent / f'two_processes_{i}.log').read_text()
          for i in range(2)]
  assert logs[0].count('model:') == 1
  assert logs[0].count('final validation loss') == 1
  assert 'model:' not in logs[1] and 'final validation loss' not in logs[1]


def test_a_process_waiting_for_its_peers_says_so(tmp_path):
  # Process 0 of 2, whose peer never starts: it says once where it waits.
  address = f'127.0.0.1:{_free_port()}'
  proc = subprocess.Popen(
      _cli(tmp_path / 'run', f'--coordinator_address={address}',
           '--num_processes=2', '--process_id=0'),
      cwd=REPO, env=_env(2), stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE, text=True)
  try:
    line = ''
    deadline = time.monotonic() + 60
    while 'waiting' not in line and time.monotonic() < deadline:
      line = proc.stderr.readline()
      assert line or proc.poll() is None, 'exited without the notice'
  finally:
    proc.kill()
    proc.communicate()
  assert 'process 0 of 2: waiting for all processes' in line, line
  assert address in line


def test_process_id_out_of_range_is_one_line(tmp_path):
  # jax.distributed used to raise this with a traceback.
  proc = subprocess.run(
      _cli(tmp_path / 'run', f'--coordinator_address=127.0.0.1:{_free_port()}',
           '--num_processes=2', '--process_id=2'),
      cwd=REPO, env=_env(2), capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2, proc.stderr
  assert proc.stderr.splitlines() == [
      'error: --process_id=2 must be in [0, --num_processes=2); number the '
      'processes 0 .. 1.'], proc.stderr
  assert not (tmp_path / 'run').exists()
