"""Tests for LoRA (moe_jax/train/lora/: adapters.py, run.py, merge.py)."""

import json
import math

import jax
import numpy as np
import pytest
from flax import nnx

from moe_jax.errors import UserInputError
from moe_jax.evaluate import evaluate_workdir
from moe_jax.models.transformer import TransformerLM
from moe_jax.train import checkpoint, init_from, setup, trainer
from moe_jax.train.lora import adapters as lora
from moe_jax.train.lora import merge as lora_merge
from moe_jax.train.lora import run as lora_run
from moe_jax.train.checkpoint import Checkpointer
from moe_jax.train.evaluate import evaluate_checkpoint
from tests import testlib

ALL = ('attention', 'experts', 'router', 'dense_ffn')


def test_merge_matches_hand_computed_updates():
  w = np.array([[1., 2., 3.], [4., 5., 6.]], np.float32)
  ad = {'a': np.array([[1.], [2.]], np.float32),
        'b': np.array([[1., 0., -1.]], np.float32)}
  scale = np.ones(3, np.float32)
  params = {'blocks': {'0': {'ffn': {'wi': w}, 'ffn_norm': {'scale': scale}}}}
  out = lora.merge(params, {'blocks': {'0': {'ffn': {'wi': ad}}}}, 0.5)
  np.testing.assert_array_equal(out['blocks']['0']['ffn']['wi'],
                                [[1.5, 2., 2.5], [5., 5., 5.]])
  assert out['blocks']['0']['ffn_norm']['scale'] is scale  # Not adapted.

  # Expert weights [E, D, F]: one A·B per expert.
  we = np.zeros((2, 2, 3), np.float32)
  ad = {'a': np.array([[[1.], [0.]], [[0.], [1.]]], np.float32),
        'b': np.array([[[1., 2., 3.]], [[-1., -1., -1.]]], np.float32)}
  out = lora.merge({'ffn': {'wi': we}}, {'ffn': {'wi': ad}}, 2.0)['ffn']['wi']
  np.testing.assert_array_equal(out[0], [[2., 4., 6.], [0., 0., 0.]])
  np.testing.assert_array_equal(out[1], [[0., 0., 0.], [-2., -2., -2.]])

  # Attention wo [H, Dh, D]: the input side is (H, Dh).
  wo = np.zeros((2, 1, 2), np.float32)
  ad = {'a': np.array([[[1.]], [[3.]]], np.float32),
        'b': np.array([[1., 10.]], np.float32)}
  out = lora.merge({'attn': {'wo': wo}}, {'attn': {'wo': ad}}, 1.0)
  np.testing.assert_array_equal(out['attn']['wo'],
                                [[[1., 10.]], [[3., 30.]]])


def _shapes(config_file='configs/switch_top1.py'):
  mcfg = setup.model_config(testlib.tiny_config(config_file))
  model = nnx.eval_shape(lambda: TransformerLM(mcfg, rngs=nnx.Rngs(0)))
  return {k: v.shape for k, v in init_from.flatten(
      nnx.to_pure_dict(nnx.state(model, nnx.Param))).items()}


def test_trainable_count_is_the_formula():
  # Tiny switch: D=32, H=2, Dh=16, F=64, E=8, 2 layers (layer 1 MoE, gelu).
  shapes, d, hd, f, e, r = _shapes(), 32, 32, 64, 8, 3
  per_target = {
      'attention': 2 * 4 * r * (d + hd),  # wq, wk, wv, wo in both layers.
      'experts': 2 * e * r * (d + f),  # wi, wo of layer 1, per expert.
      'router': r * (d + e),
      'dense_ffn': 2 * r * (d + f),  # wi, wo of layer 0.
  }
  for target, count in per_target.items():
    assert lora.num_trainable(shapes, (target,), r) == count, target
  assert lora.num_trainable(shapes, ALL, r) == sum(per_target.values())
  abstract = jax.eval_shape(
      lambda key: lora.init_adapters(key, shapes, ALL, r), jax.random.key(0))
  assert sum(x.size for x in jax.tree.leaves(abstract)) == sum(
      per_target.values())
  adapters = lora.init_adapters(jax.random.key(0), shapes, ('experts',), r)
  # B = 0, so the merged model is the base model at init.
  assert all(not np.any(v) for k, v in init_from.flatten(adapters).items()
             if k.endswith('/b'))
  a = adapters['blocks']['1']['ffn']['wi']['a']  # N(0, 1/D) per expert.
  assert a.shape == (e, d, r) and 0.5 < float(a.std()) * math.sqrt(d) < 1.5


@pytest.mark.parametrize('targets, rank, match', [
    (('attention', 'mlp'), 2, r"lora.targets=\('attention', 'mlp'\) must be a "
     'non-empty subset'),
    ((), 2, 'must be a non-empty subset'),
    (('attention',), -1, 'lora.rank=-1 must be a positive int'),
    # r above a matrix's smaller side adds parameters and no expressiveness
    # (rank 100000 gave 828x the model); tiny experts are 32 x 64.
    (('experts',), 33, r'lora.rank=33 is larger than blocks/1/ffn/w[io] seen '
     r'as a matrix allows \(its smaller side is 32\)'),
    (('attention', 'router'), 9, 'smaller side is 8'),  # Router: 32 x E=8.
])
def test_adapter_errors_are_one_line(targets, rank, match):
  with pytest.raises(UserInputError, match=match):
    lora.adapter_shapes(_shapes(), targets, rank)
  assert lora.adapter_shapes(_shapes(), ('experts',), 32)  # r = 32 is fine.


def test_lora_config_errors_are_one_line():
  config = testlib.tiny_config('configs/dense.py', {'lora.rank': 2})
  with pytest.raises(UserInputError, match='lora.rank > 0 adapts a trained '
                     'model; set --config.train.init_from'):
    lora_run.check_config(config)
  config.lora.alpha = 0.0
  with pytest.raises(UserInputError, match='lora.alpha=0.0 must be finite'):
    lora_run.check_config(config)
  with pytest.raises(UserInputError, match="select no parameter of this "
                     "model \\(e.g. 'experts' in a dense model\\)"):
    lora.adapter_shapes(_shapes('configs/dense.py'), ('experts', 'router'), 2)


def _save_base(workdir, config):
  """A base checkpoint without training: the init state saved at step 2."""
  mcfg = setup.model_config(config)
  _, state, _, _ = setup.init_state(mcfg, config,
                                    setup.make_mesh(config, mcfg))
  ckpt = Checkpointer(workdir, 2)
  ckpt.save(2, state, {'config': config.to_dict()})
  ckpt.close()


@pytest.mark.slow
def test_lora_trains_only_adapters_merges_and_runs_expert_parallel(
    tmp_path, compilation_cache_on):
  del compilation_cache_on
  base = tmp_path / 'base'
  _save_base(base, testlib.tiny_config('configs/switch_top1.py'))
  _, before = init_from.read_params(base)
  overrides = {'train.num_steps': 3, 'train.eval_every': 3,
               'train.checkpoint_every': 3, 'train.init_from': str(base),
               'lora.rank': 2, 'lora.targets': ('attention', 'experts')}
  config = testlib.tiny_config('configs/switch_top1.py', overrides)
  final = trainer.train_and_evaluate(config, str(tmp_path / 'lora'))
  # Evaluated unmerged (the adapters folded in memory), as `python -m
  # moe_jax.evaluate` does; this used to fail with a broadcasting error.
  step, metrics = evaluate_workdir(str(tmp_path / 'lora'))
  assert step == 3
  np.testing.assert_allclose(metrics['eval/loss'], final['eval/loss'],
                             rtol=1e-6)

  # The checkpoint holds the adapters alone, r·(in + out) per matrix.
  saved = testlib.saved_state(tmp_path / 'lora', 3)
  adapters = init_from.flatten(saved['params'])
  assert {k.rsplit('/', 1)[1] for k in adapters} == {'a', 'b'}
  assert sum(v.size for v in adapters.values()) == lora.num_trainable(
      {k: v.shape for k, v in before.items()}, config.lora.targets, 2)
  assert np.abs(adapters['blocks/1/ffn/wi/b']).max() > 0  # It trained.

  # Merged: adapted weights moved, every frozen one is the base's, bitwise.
  assert lora_merge.main(['--workdir', str(tmp_path / 'lora'),
                          '--out', str(tmp_path / 'merged')]) == 0
  merged = init_from.read_params(tmp_path / 'merged')[1]
  _, after = init_from.read_params(base)
  for path, w in before.items():
    np.testing.assert_array_equal(after[path], w)  # Base files untouched.
    target = lora.target_of(path, w.ndim)
    if target in config.lora.targets:
      assert not np.array_equal(merged[path], w), path
    else:
      assert merged[path].tobytes() == w.tobytes(), path
  plain = testlib.tiny_config('configs/switch_top1.py')
  np.testing.assert_allclose(
      evaluate_checkpoint(plain, str(tmp_path / 'merged'))['eval/loss'],
      final['eval/loss'], rtol=1e-6)
  # Merging again into the same folder would overwrite: refused.
  with pytest.raises(UserInputError, match='already holds a checkpoint'):
    lora_merge.merge_run(str(tmp_path / 'lora'), str(tmp_path / 'merged'))

  # The same run with experts split 4 ways over devices: the same adapters.
  (tmp_path / 'config.json').write_text(json.dumps(overrides))
  testlib.run_device_script(testlib.REPO / 'tests' / '_parallel_lora.py',
                            tmp_path, 4, timeout=300, fast_compile=True)
  # (init_from reads a checkpoint saved over 4 devices onto one.)
  ep = init_from.flatten(checkpoint.read(tmp_path / 'ep')[1]['params'])
  for path, value in adapters.items():
    np.testing.assert_allclose(ep[path], value, rtol=1e-4, atol=1e-5,
                               err_msg=path)
