"""Router state in training: the loss-free balancing bias (sign rule and
quantile balancing) and the adaptive balance weight are state, not
parameters; saved, restored and resumed bit for bit."""

import contextlib
import io
import json
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


def _optimizer_paths(state) -> list[str]:
  """Every leaf path the optimizer trains (params and Adam's moments)."""
  return [jax.tree_util.keystr(p) for p, _ in
          jax.tree.leaves_with_path((state.params, state.opt_state))]


def _logged(workdir, suffix: str) -> list:
  """The values of every per-layer metric ending in `suffix`, at the
  training steps logged in metrics.jsonl."""
  records = [json.loads(line) for line in
             (workdir / 'metrics.jsonl').read_text().splitlines()]
  return [v for r in records if 'loss' in r
          for k, v in r.items() if k.endswith(suffix)]


def _final_state(config, workdir):
  mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  return testlib.restore_latest(workdir, config, mesh)[0]


def _full_and_resumed(config, tmp_path_factory):
  """(config, uninterrupted final state, resumed final state, workdir)."""
  full = tmp_path_factory.mktemp('full')
  _train(config, full)
  # The same run killed after its step-3 checkpoint, then resumed.
  resumed = tmp_path_factory.mktemp('resumed') / 'run'
  shutil.copytree(full, resumed)
  shutil.rmtree(resumed / 'checkpoints' / '6')
  _train(config, resumed)
  return (config, _final_state(config, full), _final_state(config, resumed),
          full)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The sign rule: (config, uninterrupted and resumed final states, dir)."""
  return _full_and_resumed(_config(), tmp_path_factory)


@pytest.fixture(scope='module')
def quantile_runs(tmp_path_factory):
  """Quantile balancing, the same way."""
  return _full_and_resumed(_config('configs/sigmoid_quantile.py'),
                           tmp_path_factory)


@pytest.fixture(scope='module')
def adaptive_runs(tmp_path_factory):
  """axlearn's adaptive balance weight, the same way."""
  return _full_and_resumed(_config('configs/gshard_adaptive_balance.py'),
                           tmp_path_factory)


def test_bias_is_training_state_moved_by_gamma(runs):
  config, state, _, _ = runs
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
  paths = _optimizer_paths(state)
  assert paths and not any('router_bias' in p for p in paths)


def test_quantile_bias_is_centred_state_and_logged(quantile_runs):
  config, state, _, workdir = quantile_runs
  assert isinstance(state, RoutedTrainState)
  biases = [np.asarray(b) for b in jax.tree.leaves(state.router_state)]
  assert len(biases) == setup.model_config(config).num_moe_layers
  for b in biases:
    assert b.shape == (config.moe.num_experts,) and np.any(b != 0)
    # Not a multiple of a step: solved. Centred: adding a constant to every
    # expert's bias changes no choice, so the update removes the mean.
    assert abs(float(np.mean(b))) < 1e-6
  paths = _optimizer_paths(state)
  assert paths and not any('router_bias' in p for p in paths)
  # The metrics report the bias each step was routed with, per layer.
  logged = _logged(workdir, '/router_bias')
  assert logged and len(logged[-1]) == config.moe.num_experts


def test_adaptive_weight_is_state_and_logged(adaptive_runs):
  config, state, _, workdir = adaptive_runs
  assert isinstance(state, RoutedTrainState)
  leaves = {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree.leaves_with_path(state.router_state)}
  layers = setup.model_config(config).num_moe_layers
  for name in ('balance_log_scale', 'over_capacity_average',
               'over_capacity_count'):
    values = [v for k, v in leaves.items() if name in k]
    assert len(values) == layers and all(v.shape == () for v in values)
  counts = [v for k, v in leaves.items() if 'over_capacity_count' in k]
  assert all(float(c) == config.train.num_steps for c in counts)
  # Each step moves ℓ by −ε, 0 or +ε.
  for k, v in leaves.items():
    if 'balance_log_scale' in k:
      steps = float(v) / config.moe.adaptive_balance.log_step
      assert abs(steps - round(steps)) < 1e-3 and abs(steps) <= 6
  paths = _optimizer_paths(state)
  assert paths and not any('balance_log_scale' in p for p in paths)
  logged = _logged(workdir, '/balance_weight')
  assert logged and all(np.isfinite(logged))


@pytest.mark.parametrize('name', ['runs', 'quantile_runs', 'adaptive_runs'])
def test_interrupted_and_resumed_run_is_bitwise_identical(name, request):
  _, full, resumed, _ = request.getfixturevalue(name)
  for (path, a), b in zip(jax.tree.leaves_with_path(full),
                          jax.tree.leaves(resumed)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (
        jax.tree_util.keystr(path))


# ReMoE's L1 weight λ (core/routing/relu.py) is router state the same way.


@pytest.fixture(scope='module')
def relu_runs(tmp_path_factory):
  return _full_and_resumed(_config('configs/relu_router.py'), tmp_path_factory)


def test_relu_l1_weight_is_state_moved_by_alpha(relu_runs):
  config, state, _, _ = relu_runs
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
  paths = _optimizer_paths(state)
  assert paths and not any('relu_l1_weight' in p for p in paths)


def test_relu_resumed_run_is_bitwise_identical(relu_runs):
  _, full, resumed, _ = relu_runs
  for (path, a), b in zip(jax.tree.leaves_with_path(full),
                          jax.tree.leaves(resumed)):
    assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), (
        jax.tree_util.keystr(path))
