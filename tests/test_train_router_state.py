"""The loss-free balancing bias in training: state, not parameter; saved,
restored and resumed bit for bit."""

import contextlib
import io
import shutil

import jax
import numpy as np
import pytest

from moe_jax.parallel import mesh as mesh_lib
from moe_jax.train import setup, trainer
from moe_jax.train.step import RoutedTrainState
import testlib

GAMMA = 1e-3


@pytest.fixture(scope='module', autouse=True)
def _cache(compilation_cache_on):
  del compilation_cache_on


def _config(config_file='configs/sigmoid_loss_free.py'):
  # Checkpoints at steps 3 and 6 (num_steps = 6).
  return testlib.tiny_config(config_file, {
      'train.checkpoint_every': 3, 'train.eval_every': 6})


def _train(config, workdir):
  with contextlib.redirect_stdout(io.StringIO()):
    trainer.train_and_evaluate(config, str(workdir))


def _final_state(config, workdir):
  mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  return testlib.restore_latest(workdir, config, mesh)[0]


def _full_and_resumed(tmp_path_factory, config):
  """(config, uninterrupted final state, resumed final state)."""
  full = tmp_path_factory.mktemp('full')
  _train(config, full)
  # The same run killed after its step-3 checkpoint, then resumed.
  resumed = tmp_path_factory.mktemp('resumed') / 'run'
  shutil.copytree(full, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '6')
  _train(config, resumed)
  return config, _final_state(config, full), _final_state(config, resumed)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  return _full_and_resumed(tmp_path_factory, _config())


def test_bias_is_training_state_moved_by_gamma(runs):
  config, state, _ = runs
  assert isinstance(state, RoutedTrainState)
  biases = jax.tree.leaves(state.router_state)
  assert len(biases) == setup.model_config(config).num_moe_layers
  for b in biases:
    b = np.asarray(b)
    assert b.shape == (config.moe.num_experts,)
    steps = b / GAMMA  # Each step moves each entry by -1, 0 or +1 γ.
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert np.all(np.abs(steps) <= config.train.num_steps + 1e-3)
    assert np.any(b != 0)
  # Not a parameter: the optimizer's trees hold no bias.
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree.leaves_with_path((state.params, state.opt_state))]
  assert paths and not any('router_bias' in p for p in paths)


def test_interrupted_and_resumed_run_is_bitwise_identical(runs):
  _, full, resumed = runs
  for (path, a), b in zip(jax.tree.leaves_with_path(full),
                          jax.tree.leaves(resumed)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (
        jax.tree_util.keystr(path))


# ReMoE's L1 weight λ (core/routing/relu.py) is router state the same way.


@pytest.fixture(scope='module')
def relu_runs(tmp_path_factory):
  return _full_and_resumed(tmp_path_factory, _config('configs/relu_router.py'))


def test_relu_l1_weight_is_state_moved_by_alpha(relu_runs):
  config, state, _ = relu_runs
  assert isinstance(state, RoutedTrainState)
  weights = jax.tree.leaves(state.router_state)
  assert len(weights) == setup.model_config(config).num_moe_layers
  options = config.moe.router_options.relu
  for lam in weights:
    lam = np.asarray(lam)
    assert lam.shape == (1,)
    # Each step multiplies λ by α, 1 or 1/α.
    steps = np.log(lam / options.l1_weight_init) / np.log(
        options.l1_weight_multiplier)
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert 0 < abs(steps[0]) <= config.train.num_steps + 1e-3
  paths = [jax.tree_util.keystr(p) for p, _ in
           jax.tree.leaves_with_path((state.params, state.opt_state))]
  assert paths and not any('relu_l1_weight' in p for p in paths)


def test_relu_resumed_run_is_bitwise_identical(relu_runs):
  _, full, resumed = relu_runs
  for (path, a), b in zip(jax.tree.leaves_with_path(full),
                          jax.tree.leaves(resumed)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (
        jax.tree_util.keystr(path))
