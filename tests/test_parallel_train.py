"""Training and checkpoints on 8 CPU devices: meshes change no numbers.

The multi-device work runs once, in a subprocess of tests/_parallel_train.py
with XLA forced to 8 host devices (JAX fixes the device count when its
backend starts, and the rest of the suite runs on one device). It saves
parameters, losses, restored states and where their shards live; the
assertions are here. All of it uses the tiny switch config with batch 8.
"""

import json
import pathlib
import re

import numpy as np
import pytest
from testlib import assert_trees_close, load_npz, run_device_script

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tests' / '_parallel_train.py'
NUM_DEVICES = 8
TRAIN_STEPS = 8  # As in the script: checkpoints at 4 and 8.
RTOL = 1e-5  # float32; a mesh only reorders reductions.

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  """The directory the helper script filled (see its docstring)."""
  out = tmp_path_factory.mktemp('parallel_train')
  run_device_script(SCRIPT, out, NUM_DEVICES, timeout=400, fast_compile=True)
  return out


def _load(path):
  return load_npz(path)


def _is_expert_weight(key, shape):
  """MoE FFN weights (and their moments): [E, ...]; dense FFNs are 2-D."""
  return (re.search(r'/ffn/(wi|wi_gate|wo)/', key) is not None and
          len(shape) == 3)


def _records(workdir):
  lines = (workdir / 'metrics.jsonl').read_text().splitlines()
  return {r['step']: r for r in map(json.loads, lines) if 'loss' in r}


# ------------------------------------------------------------ train step --


def test_train_step_on_2x4x1_matches_one_device(results):
  one = _load(results / 'step_single.npz')
  ep = _load(results / 'step_2x4x1.npz')
  # Same initial parameters (init is jitted straight into the shards).
  init = [k for k in one if k.startswith('init/')]
  assert init and sorted(init) == sorted(k for k in ep if k.startswith('init/'))
  for key in init:
    np.testing.assert_array_equal(ep[key], one[key], err_msg=key)
  # The model has MoE expert weights, and every parameter moved: the check
  # below compares real updates (the first step's learning rate is 0).
  final = [k for k in one if k.startswith('final/')]
  assert any(_is_expert_weight(k, one[k].shape) for k in final)
  for key in final:
    assert not np.array_equal(one[key], one['init/' + key[len('final/'):]]), key
  assert_trees_close(ep, one, RTOL, 'train_step on (2,4,1) vs one device')


# ----------------------------------------------------------- checkpoints --


@pytest.mark.parametrize('mesh', ['1x1x1', '4x2x1'])
def test_checkpoint_from_2x4x1_restores_identically(results, mesh):
  saved_on = _load(results / 'restored_2x4x1.npz')
  restored = _load(results / f'restored_{mesh}.npz')
  assert sorted(restored) == sorted(saved_on)
  assert any(k.startswith('opt_state/') for k in saved_on)
  for key, want in saved_on.items():
    have = restored[key]
    assert (have.dtype, have.shape) == (want.dtype, want.shape), key
    assert have.tobytes() == want.tobytes(), key  # Bitwise.


@pytest.mark.parametrize('mesh,expert_axis',
                         [('2x4x1', 4), ('1x1x1', 1), ('4x2x1', 2)])
def test_restored_state_is_placed_on_the_target_mesh(results, mesh,
                                                     expert_axis):
  report = json.loads((results / 'report.json').read_text())[
      f'restored_{mesh}']
  expert_leaves = 0
  for key, leaf in report['leaves'].items():
    assert leaf['sharding_matches'], key
    assert leaf['devices'] == report['mesh_devices'], key
    if _is_expert_weight(key, leaf['shape']):  # Params and Adam moments.
      expert_leaves += 1
      assert leaf['per_device'] == leaf['total'] // expert_axis, (key, leaf)
  assert expert_leaves >= 6  # wi and wo, each with its mu and nu.


def test_training_resumes_on_another_mesh(results):
  """Killed after the step-4 checkpoint on (2,4,1), resumed on (4,2,1)."""
  resumed = results / 'resumed'
  stdout = (resumed / 'stdout.txt').read_text()
  assert f'resumed from step {TRAIN_STEPS // 2}' in stdout, stdout
  assert (resumed / 'checkpoints' / str(TRAIN_STEPS)).is_dir()
  # It continues the same trajectory as the uninterrupted run on (2,4,1).
  reference, continued = _records(results / 'run'), _records(resumed)
  assert sorted(continued) == sorted(reference) == list(
      range(1, TRAIN_STEPS + 1))
  for step in range(TRAIN_STEPS // 2 + 1, TRAIN_STEPS + 1):
    np.testing.assert_allclose(continued[step]['loss'],
                               reference[step]['loss'], rtol=RTOL,
                               err_msg=f'step {step}')
  assert_trees_close(_load(results / 'resumed_final.npz'),
                     _load(results / 'restored_1x1x1.npz'), RTOL,
                'final state resumed on (4,2,1) vs uninterrupted on (2,4,1)')
