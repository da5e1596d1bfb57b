"""Gradient accumulation (train.grad_accum_steps, train/accumulate.py): the
pieces by hand, and bad settings refused with one line before anything is
written. The train steps themselves (N = 4 against N = 1, with and without
a mesh, and resuming) run once in a subprocess: test_parallel_accumulate.py.
"""

import contextlib
import io

import jax
import numpy as np
import pytest

from moe_jax.core import losses
from moe_jax.errors import UserInputError
from moe_jax.train import accumulate, setup, trainer
import testlib


def _config(**overrides):
  return testlib.tiny_config('configs/switch_top1.py', overrides)


def test_split_keeps_each_shard_rows():
  x = np.arange(16)[:, None]  # 2 shards of 8 rows, 4 micro-batches.
  micro = np.asarray(accumulate.split({'x': x}, 4, 2)['x'])[..., 0]
  np.testing.assert_array_equal(micro[0], [0, 1, 8, 9])
  np.testing.assert_array_equal(micro[3], [6, 7, 14, 15])


def test_choice_counts_by_hand():
  index = np.array([[[0, 1]], [[1, 1]]])  # [G=2, S=1, K=2]
  np.testing.assert_array_equal(losses.choice_counts(index, 3), [1, 3, 0])


def test_global_fraction_makes_the_micro_batch_mean_exact():
  """E·Σ f·P_i averaged over micro-batches, f the whole batch's, is the
  batch's loss, value and gradient; with each micro-batch's own f it is
  not."""
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(8, 6, 4)).astype(np.float32)
  index = rng.integers(0, 4, size=(8, 6, 2))
  probs = lambda z: jax.nn.softmax(z, -1)
  whole = lambda z: losses.load_balance_loss(probs(z), index)
  f = losses.choice_counts(index, 4) / index.size

  def mean_over_micro(z, fraction):
    return sum(losses.load_balance_loss(probs(z[i::4]), index[i::4], fraction)
               for i in range(4)) / 4

  np.testing.assert_allclose(mean_over_micro(logits, f), whole(logits),
                             rtol=1e-6)
  np.testing.assert_allclose(jax.grad(mean_over_micro)(logits, f),
                             jax.grad(whole)(logits), atol=1e-7)
  assert abs(mean_over_micro(logits, None) - whole(logits)) > 1e-3


# ------------------------------------------------------------- bad input --


def _refused(config, tmp_path, *needles):
  workdir = tmp_path / 'run'
  with pytest.raises(UserInputError) as error, \
      contextlib.redirect_stdout(io.StringIO()):
    trainer.train_and_evaluate(config, str(workdir))
  message = str(error.value)
  assert '\n' not in message
  for needle in needles:
    assert needle in message, message
  assert not workdir.exists()


@pytest.mark.parametrize('steps', [0, -2])
def test_non_positive_steps_are_refused(steps, tmp_path):
  config = _config(**{'train.grad_accum_steps': steps})
  _refused(config, tmp_path, f'train.grad_accum_steps={steps}', 'positive')


def test_steps_must_divide_the_batch(tmp_path):
  config = _config(**{'train.grad_accum_steps': 3})
  _refused(config, tmp_path, 'grad_accum_steps=3', 'batch_size=4')


def test_steps_must_divide_each_data_shard():
  config = _config(**{'train.grad_accum_steps': 4})
  mcfg = setup.model_config(config)
  accumulate.check(config, mcfg, batch_shards=1)  # 8 rows: fine.
  with pytest.raises(UserInputError, match='each of the 4 data shards'):
    accumulate.check(config, mcfg, batch_shards=4)  # 2 rows a shard.


def test_group_size_must_fit_a_micro_batch(tmp_path):
  config = _config(**{'train.grad_accum_steps': 4, 'moe.group_size': 64})
  _refused(config, tmp_path, 'moe.group_size=64', 'micro-batch')


@pytest.mark.parametrize('config_file, words', [
    ('configs/sigmoid_quantile.py', "bias_update='quantile'"),
    ('configs/relu_router.py', "router='relu'"),
    ('configs/gshard_adaptive_balance.py', 'adaptive_balance'),
    ('configs/noisy_topk.py', 'CV² losses'),
])
def test_batch_pooled_state_is_refused(config_file, words, tmp_path):
  config = testlib.tiny_config(config_file, {'train.grad_accum_steps': 2})
  _refused(config, tmp_path, words, 'grad_accum_steps=1')
