"""Tests for train.init_from and sparse upcycling (moe_jax/train/init_from.py)."""


import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import records, run, run_hash, upcycling
from experiments.ablation import apply_overrides
from experiments.scheduler import RunSpec, Seeds
from moe_jax.errors import UserInputError
from moe_jax.models.transformer import TransformerLM
from moe_jax.config import validate
from moe_jax.train import init_from, setup, trainer
from tests import testlib

# Top-2 with gates renormalised over the two chosen experts, and no drops:
# an upcycled layer then computes sum_k g_k · FFN(x) = FFN(x).
EXACT = {'moe.router': 'topk', 'moe.top_k': 2, 'moe.dispatcher': 'dropless'}


def _model(config_file, overrides=None, seed=0):
  config = testlib.tiny_config(config_file, overrides)
  return TransformerLM(setup.model_config(config), rngs=nnx.Rngs(seed))


def _upcycled(dense, moe):
  """`moe` with its parameters filled from `dense` by the trainer's code."""
  source = {k: np.asarray(v) for k, v in init_from.flatten(
      nnx.to_pure_dict(nnx.state(dense, nnx.Param))).items()}
  params = nnx.state(moe, nnx.Param)
  target = init_from.flatten(nnx.to_pure_dict(params))
  plan = init_from.plan_init(
      {k: v.shape for k, v in source.items()},
      {k: v.shape for k, v in target.items()},
      upcycle=True, name='dense')
  src = init_from.InitSource(None, 0, plan, source)
  nnx.update(moe, init_from.apply(src, params))
  return plan


@nnx.jit(static_argnames='return_routing')
def _forward(model, tokens, return_routing=False):
  # One compiled program per model: eager dispatch op by op is slower.
  return model(tokens, return_routing=return_routing)


def test_upcycled_model_computes_the_dense_model_at_init():
  dense = _model('configs/dense.py')
  moe = _model('configs/switch_top1.py', EXACT, seed=1)
  router_before = np.asarray(moe.blocks[1].ffn.router_kernel[...])
  plan = _upcycled(dense, moe)
  # Layer 1 is MoE (moe_every=2): its FFN is tiled, its router kept fresh.
  assert plan['blocks/1/ffn/wi'] == plan['blocks/1/ffn/wo'] == 'tile'
  assert plan['blocks/1/ffn/router_kernel'] == 'fresh'
  assert plan['blocks/0/ffn/wi'] == plan['embed'] == 'copy'
  experts = np.asarray(moe.blocks[1].ffn.wi[...])
  assert experts.shape == (8, 32, 64)
  for e in range(8):
    np.testing.assert_array_equal(experts[e], dense.blocks[1].ffn.wi[...])
  np.testing.assert_array_equal(moe.blocks[1].ffn.router_kernel[...],
                                router_before)
  np.testing.assert_array_equal(moe.head[...], dense.head[...])

  tokens = jax.random.randint(jax.random.key(0), (2, 32), 0, 256)
  want, _ = _forward(dense, tokens)
  got, aux = _forward(moe, tokens, return_routing=True)
  # The fresh router does spread tokens over several experts.
  assert len(np.unique(aux['routing'][1]['plan'].expert_index)) > 2
  np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def _shapes(**overrides):
  dense = {'embed': (256, 32), 'blocks/0/attn/wq': (32, 2, 16),
           'blocks/1/ffn/wi': (32, 64), 'blocks/1/ffn/wo': (64, 32)}
  moe = {'embed': (256, 32), 'blocks/0/attn/wq': (32, 2, 16),
         'blocks/1/ffn/router_kernel': (32, 8),
         'blocks/1/ffn/wi': (8, 32, 64), 'blocks/1/ffn/wo': (8, 64, 32)}
  return dense, {**moe, **overrides}


@pytest.mark.parametrize('change, upcycle, match', [
    ({'blocks/1/ffn/wi': (8, 32, 128), 'blocks/1/ffn/wo': (8, 128, 32)}, True,
     r"'blocks/1/ffn/wi' in d is \[32, 64\] but each expert here is "
     r'\[32, 128\]; upcycling needs moe.d_ff'),
    ({}, False, "'blocks/1/ffn' is a dense FFN in d and an MoE layer here; "
     'set --config.train.upcycle=True'),
    ({'embed': (300, 32)}, True,
     r"'embed' is \[256, 32\] in d but \[300, 32\] here"),
    ({'blocks/2/attn/wq': (32, 2, 16)}, True,
     r"the checkpoint in d has no parameter 'blocks/2/attn/wq'"),
])
def test_mismatched_shapes_are_one_line_errors(change, upcycle, match):
  dense, moe = _shapes(**change)
  with pytest.raises(UserInputError, match=match) as e:
    init_from.plan_init(dense, moe, upcycle=upcycle, name='d')
  assert '\n' not in str(e.value)


def test_plan_refuses_unused_source_params_and_upcycling_nothing():
  dense, moe = _shapes()
  dense['blocks/2/ffn/wi'] = (32, 64)
  with pytest.raises(UserInputError, match="'blocks/2/ffn/wi' of d has no "
                     r'counterpart here \(1 such\)'):
    init_from.plan_init(dense, moe, upcycle=True, name='d')
  # Upcycling an MoE run (or into a dense model) copies and tiles nothing.
  with pytest.raises(UserInputError, match='upcycle=True but no layer is '
                     'dense in d and MoE here'):
    init_from.plan_init(moe, moe, upcycle=True, name='d')
  plan = init_from.plan_init(moe, moe, upcycle=False, name='d')
  assert set(plan.values()) == {'copy'}


def test_bad_init_from_paths_are_one_line_errors(tmp_path):
  config = testlib.tiny_config('configs/switch_top1.py', {
      'train.init_from': str(tmp_path / 'nope'), 'train.upcycle': True})
  mcfg = setup.model_config(config)
  with pytest.raises(UserInputError, match="nope' has no checkpoints "
                     'folder; set --config.train.init_from'):
    init_from.from_config(config, setup.new_model(mcfg, config))
  (tmp_path / 'empty' / 'checkpoints').mkdir(parents=True)
  config.train.init_from = str(tmp_path / 'empty')
  with pytest.raises(UserInputError, match="empty' holds no checkpoint"):
    init_from.from_config(config, setup.new_model(mcfg, config))
  config.train.init_from = None
  with pytest.raises(UserInputError, match='upcycle=True needs the dense '
                     'run'):
    validate.check_train_config(config)


def _tiny_base(steps):
  # test_experiments.py's base: in a full run its dense twin is compiled
  # already (the suite's persistent compilation cache).
  return testlib.tiny_config('configs/switch_top1.py', {
      'train.num_steps': steps, 'train.eval_every': steps,
      'train.checkpoint_every': steps, 'train.log_every': 1})


@pytest.mark.slow
def test_runner_trains_the_dense_start_then_upcycled_and_continued_runs(
    tmp_path, monkeypatch, compilation_cache_on):
  """The upcycling ablation's shape on :tiny configs, 3 + 3 steps."""
  del compilation_cache_on
  monkeypatch.setattr(run, 'RESULTS', tmp_path)
  # Summaries and plots are test_experiments.py's; here they would only
  # cost time.
  monkeypatch.setattr(run.report, 'write', lambda *a, **k: None)
  ab = dataclasses.replace(upcycling.ABLATION, base=_tiny_base)
  out = tmp_path / 'upcycling'
  rows = {r['variant']: r for r in run.run_ablation(
      ab, seeds=Seeds(1), steps=3, out=out, overrides={}, command='test')}
  assert set(rows) == {'dense_continued', 'upcycled'}  # Not dense_start.
  start = out / 'workdirs' / 'dense_start' / 'seed0'
  start_loss = [r for r in map(json.loads, (start / 'metrics.jsonl').open())
                if 'eval/loss' in r][-1]['eval/loss']
  # Both runs went on from the dense start and lowered its loss.
  for r in rows.values():
    assert r['status'] == 'ok' and float(r['eval_loss']) < start_loss - 0.02
  assert json.loads(rows['upcycled']['expert_fraction'])  # It is an MoE.

  # The hash in runs.csv holds init_from relative to the results folder;
  # the run itself got the real path, and a rerun trains nothing.
  config = ab.base(3)
  apply_overrides(config, {**ab.variant('upcycled').overrides, 'seed': 0,
                           'train.init_from': 'workdirs/dense_start/seed0'})
  assert rows['upcycled']['config_hash'] == run_hash.config_hash(config)
  # Resuming reads its own checkpoint, not the source: with the dense start
  # moved away, the finished upcycled run restores and evaluates the same.
  spec = RunSpec(ab.name, 'upcycled', 0, 3, {}, Seeds(1), str(out))
  run_config = spec.run_config(ab)
  shutil.move(start, tmp_path / 'moved')
  final = trainer.train_and_evaluate(
      run_config, str(out / 'workdirs' / 'upcycled' / 'seed0'))
  assert final['eval/loss'] == pytest.approx(float(rows['upcycled']['eval_loss']))
  shutil.move(tmp_path / 'moved', start)
  monkeypatch.setattr(records, 'train_run', None)  # Would fail if called.
  monkeypatch.setattr(trainer, 'train_and_evaluate', None)
  run.run_ablation(ab, seeds=Seeds(1), steps=3, out=out, overrides={},
                   command='test')
  assert spec.run_config(ab).train.init_from == str(start)
