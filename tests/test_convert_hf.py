"""Hugging Face checkpoint export -> import without PyTorch: bitwise round
trips, the config.json fields, sharding, and one-line errors.

(The comparison against `transformers` itself is tests/test_convert_hf_torch.py.)
"""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from moe_jax.analysis.trace import record_trace
from moe_jax.convert import hf_moe
from moe_jax.convert.safetensors_dir import write_tensors
from moe_jax.core.config import MoEConfig
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM

# The MoE fields an import sets (HF stores no capacity or z-loss).
_IMPORTED = dict(router='topk', expert_type='swiglu', dispatcher='dropless',
                 z_loss_weight=0.0, load_balance_weight=0.01)


def mixtral_like(**kw):
  kw.setdefault('moe', MoEConfig(num_experts=4, top_k=2, d_ff=12, **_IMPORTED))
  return ModelConfig(
      vocab_size=40, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2,
      d_ff=12, max_len=64, moe_every=1, norm_eps=1e-5, rope_theta=1e6, **kw)


def qwen_like(**kw):
  # Dense layer 0 (mlp_only_layers=[0]), MoE every layer after it, two
  # gated shared experts, raw softmax gates, q/k/v biases.
  return ModelConfig(
      vocab_size=40, d_model=16, num_layers=3, num_heads=4, d_ff=20,
      max_len=64, moe_every=1, first_dense_layers=1, qkv_bias=True,
      moe=MoEConfig(num_experts=4, top_k=2, d_ff=8, num_shared_experts=2,
                    shared_expert_gate=True,
                    router_options={'topk': {'renormalize': False}},
                    **_IMPORTED), **kw)


def olmoe_like(**kw):
  # QK-norm over all heads, every layer MoE, raw softmax gates.
  moe = MoEConfig(num_experts=4, top_k=2, d_ff=12, router_options={
      'topk': {'renormalize': False}}, **_IMPORTED)
  return dataclasses.replace(mixtral_like(qk_norm='all_heads', moe=moe), **kw)


def qwen3_like(**kw):
  # Per-head QK-norm, Dh = 6 (not D/H = 4), a dense first layer, a window.
  kw.setdefault('moe', MoEConfig(num_experts=4, top_k=2, d_ff=8, **_IMPORTED))
  return ModelConfig(
      vocab_size=40, d_model=16, num_layers=3, num_heads=4, num_kv_heads=2,
      head_dim=6, d_ff=20, max_len=64, moe_every=1, first_dense_layers=1,
      qk_norm='per_head', sliding_window=5, **kw)


def _params(config):
  """Random float32 parameters of the model's shapes (numpy: no compiles)."""
  shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: TransformerLM(config, rngs=nnx.Rngs(0))), nnx.Param))
  rng = np.random.default_rng(0)
  return jax.tree.map(
      lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes)


@pytest.mark.parametrize('make', [mixtral_like, qwen_like, olmoe_like,
                                  qwen3_like,
                                  lambda: mixtral_like(tie_embeddings=True)])
def test_export_then_import_is_bitwise(make, tmp_path):
  config = make()
  params = _params(config)
  hf_moe.export_checkpoint(config, params, tmp_path)
  back_config, back = hf_moe.import_checkpoint(tmp_path)
  assert back_config == config
  flat, ref = jax.tree.leaves_with_path(back), jax.tree.leaves_with_path(params)
  assert [p for p, _ in flat] == [p for p, _ in ref]
  for (path, a), (_, b) in zip(flat, ref):
    assert np.array_equal(a, np.asarray(b)), path


def test_config_json_fields(tmp_path):
  hf_moe.export_checkpoint(mixtral_like(), _params(mixtral_like()), tmp_path)
  hf = json.loads((tmp_path / 'config.json').read_text())
  assert hf['architectures'] == ['MixtralForCausalLM']
  assert (hf['num_local_experts'], hf['num_experts_per_tok'],
          hf['intermediate_size'], hf['num_key_value_heads']) == (4, 2, 12, 2)
  assert (hf['rope_theta'], hf['rms_norm_eps']) == (1e6, 1e-5)
  assert hf['tie_word_embeddings'] is False
  hf = hf_moe.config_to_hf(qwen_like())
  assert hf['model_type'] == 'qwen2_moe'
  assert (hf['moe_intermediate_size'], hf['shared_expert_intermediate_size'],
          hf['intermediate_size']) == (8, 16, 20)
  assert (hf['mlp_only_layers'], hf['decoder_sparse_step']) == ([0], 1)
  assert hf['norm_topk_prob'] is False and hf['qkv_bias'] is True
  hf = hf_moe.config_to_hf(olmoe_like())
  assert (hf['model_type'], hf['num_experts'], hf['intermediate_size'],
          hf['norm_topk_prob'], hf['attention_bias']) == ('olmoe', 4, 12,
                                                          False, False)
  hf = hf_moe.config_to_hf(qwen3_like())
  assert (hf['model_type'], hf['head_dim'], hf['moe_intermediate_size'],
          hf['mlp_only_layers'], hf['use_sliding_window'],
          hf['sliding_window']) == ('qwen3_moe', 6, 8, [0], True, 5)


def test_absent_keys_take_the_familys_defaults():
  # transformers reads a key config.json leaves out as its class default
  # (checked against transformers in tests/test_convert_hf_torch.py).
  hf = hf_moe.config_to_hf(qwen_like())
  for key in ('norm_topk_prob', 'rms_norm_eps', 'rope_theta'):
    del hf[key]
  config = hf_moe.config_from_hf(hf)
  assert not config.moe.router_options.renormalize
  assert (config.norm_eps, config.rope_theta) == (1e-6, 1e4)
  hf = hf_moe.config_to_hf(mixtral_like())
  del hf['rope_theta']
  assert hf_moe.config_from_hf(hf).rope_theta == 1e6


def test_tensor_layout_of_one_expert_and_attention(tmp_path):
  config = mixtral_like()
  params = _params(config)
  hf_moe.export_checkpoint(config, params, tmp_path)
  t = load_file(tmp_path / 'model.safetensors')
  moe = params['blocks'][1]['ffn']
  # w1 (SiLU gate) of expert 3 is wi_gate[3]ᵀ: [F, D] = [12, 16].
  w1 = t['model.layers.1.block_sparse_moe.experts.3.w1.weight']
  np.testing.assert_array_equal(w1, np.asarray(moe['wi_gate'][3]).T)
  np.testing.assert_array_equal(
      t['model.layers.1.block_sparse_moe.experts.3.w2.weight'],
      np.asarray(moe['wo'][3]).T)
  # k_proj rows are kv-head-major: row h·Dh + j is wk[:, h, j].
  wk = np.asarray(params['blocks'][0]['attn']['wk'])  # [16, 2, 4]
  k = t['model.layers.0.self_attn.k_proj.weight']  # [8, 16]
  np.testing.assert_array_equal(k[1 * 4 + 2], wk[:, 1, 2])


def _fuse(tensors, prefix):
  """transformers 5's fused expert layout (save_original_format=False) of
  per-expert tensors: every family under `mlp.`, gate then up."""
  out, experts = {}, {}
  for name, array in tensors.items():
    name = name.replace(prefix, 'mlp.')
    if '.experts.' not in name:
      out[name] = array
      continue
    layer, rest = name.split('.experts.')
    e, kind = rest.split('.')[:2]
    experts.setdefault(layer, {}).setdefault(kind, {})[int(e)] = array
  for layer, kinds in experts.items():
    gate, up, down = (np.stack([kinds[k][e] for e in sorted(kinds[k])])
                      for k in sorted(kinds, key='w1 gate_proj w3 up_proj '
                                      'w2 down_proj'.split().index))
    out[layer + '.experts.gate_up_proj'] = np.concatenate([gate, up], 1)
    out[layer + '.experts.down_proj'] = down
  return out


@pytest.mark.parametrize('make,prefix', [(mixtral_like, 'block_sparse_moe.'),
                                         (qwen_like, 'mlp.')])
def test_fused_expert_layout_imports(make, prefix, tmp_path):
  config = make()
  params = _params(config)
  hf_moe.export_checkpoint(config, params, tmp_path / 'orig')
  fused = _fuse(load_file(tmp_path / 'orig' / 'model.safetensors'), prefix)
  assert fused['model.layers.1.mlp.experts.gate_up_proj'].shape == (
      4, 2 * config.moe.d_ff, 16)
  write_tensors(tmp_path / 'fused', fused)
  shutil.copy(tmp_path / 'orig' / 'config.json', tmp_path / 'fused')
  back_config, back = hf_moe.import_checkpoint(tmp_path / 'fused')
  assert back_config == config
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_sharded_checkpoint_round_trips(tmp_path):
  config = qwen_like()
  params = _params(config)
  names = hf_moe.export_checkpoint(config, params, tmp_path,
                                   max_shard_bytes=4096)
  assert len(names) > 2 and (tmp_path / 'model.safetensors.index.json').exists()
  index = json.loads((tmp_path / 'model.safetensors.index.json').read_text())
  assert set(index['weight_map'].values()) == set(names)
  _, back = hf_moe.import_checkpoint(tmp_path)
  np.testing.assert_array_equal(back['blocks'][2]['ffn']['shared_gate'],
                                params['blocks'][2]['ffn']['shared_gate'])


def test_capacity_counterfactual_on_imported_weights(tmp_path):
  # The recipe in docs/architectures.md: the same weights with capacity, through the
  # routing-trace API the notebooks use.
  config = mixtral_like()
  hf_moe.export_checkpoint(config, _params(config), tmp_path)
  tokens = np.random.default_rng(0).integers(0, 40, (2, 17))
  batch = [{'inputs': tokens[:, :-1], 'targets': tokens[:, 1:]}]
  dropless = record_trace(hf_moe.load_model(tmp_path), batch)
  tight = record_trace(hf_moe.load_model(
      tmp_path, dispatcher='index', eval_capacity_factor=0.25,
      min_capacity=1), batch)
  assert not dropless.dropped.any()
  # C = ceil(K·S·cf/E) = ceil(2·16·0.25/4) = 2 slots per expert for 32
  # choices per group: at least 24 of 32 are dropped.
  assert tight.dropped.mean() >= 0.75
  assert not np.allclose(tight.loss, dropless.loss, rtol=1e-3)


def test_bad_input_is_one_line(tmp_path):
  with pytest.raises(UserInputError, match=r"moe\.router='switch'"):
    hf_moe.config_to_hf(mixtral_like().__class__(
        moe=MoEConfig(router='switch', expert_type='swiglu')))
  with pytest.raises(UserInputError, match='dense layers'):
    hf_moe.config_to_hf(mixtral_like(first_dense_layers=1))
  hf = hf_moe.config_to_hf(mixtral_like())
  with pytest.raises(UserInputError, match="rope_scaling type 'linear'"):
    hf_moe.config_from_hf({**hf, 'rope_scaling': {'type': 'linear'}})
  with pytest.raises(UserInputError, match="model_type='llama'"):
    hf_moe.config_from_hf({**hf, 'model_type': 'llama'})
  with pytest.raises(UserInputError, match='config.json is missing'):
    hf_moe.import_checkpoint(tmp_path)
  (tmp_path / 'config.json').write_text(json.dumps(hf))
  with pytest.raises(UserInputError, match='no \\*.safetensors'):
    hf_moe.import_checkpoint(tmp_path)


@pytest.mark.parametrize('make,change,match', [
    (olmoe_like, {'clip_qkv': 8.0}, 'clip_qkv=8.0'),
    (olmoe_like, {'attention_bias': True}, 'attention_bias=true'),
    (olmoe_like, {'head_dim': 8}, 'head_dim=8 differs'),
    (qwen3_like, {'attention_bias': True}, 'attention_bias=true'),
    (qwen3_like, {'hidden_act': 'gelu'}, "hidden_act='gelu'"),
    (qwen3_like, {'mlp_only_layers': [1]}, r'mlp_only_layers=\[1\]'),
    (qwen3_like, {'hidden_size': None}, "no 'hidden_size'"),
    (qwen_like, {'use_sliding_window': True}, 'use_sliding_window=true'),
])
def test_config_fields_we_cannot_honour_are_named(make, change, match):
  hf = hf_moe.config_to_hf(make())
  hf.update(change)
  hf = {k: v for k, v in hf.items() if v is not None}
  with pytest.raises(UserInputError, match=match) as e:
    hf_moe.config_from_hf(hf)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('config,match', [
    (olmoe_like(first_dense_layers=1), 'dense layers'),
    (olmoe_like(sliding_window=4), 'model.sliding_window'),
    (olmoe_like(head_dim=6), 'model.head_dim=6'),
    (qwen3_like(qkv_bias=True), 'model.qkv_bias=True'),
    (qwen3_like(moe=MoEConfig(num_experts=4, d_ff=8, num_shared_experts=1,
                              **_IMPORTED)), 'moe.num_shared_experts=1'),
])
def test_configs_a_family_cannot_hold_are_refused(config, match):
  with pytest.raises(UserInputError, match=match) as e:
    hf_moe.config_to_hf(config)
  assert 'cannot export as' in str(e.value) and '\n' not in str(e.value)


_Q = 'model.layers.1.self_attn.q_norm.weight'
_GATE_UP = 'model.layers.1.mlp.experts.gate_up_proj'


@pytest.mark.parametrize('fused,change,match', [
    (False, lambda t: t.pop(_Q), f"no tensor '{_Q}'"),
    (False, lambda t: t.update(extra=np.zeros(3, np.float32)),
     "tensor 'extra' .1 extra"),
    (False, lambda t: t.update({_Q: np.ones(7, np.float32)}),
     r'shape \[7\], but config.json implies \[6\]'),
    (False, lambda t: t.update({_Q: np.ones(6, np.int32)}), 'is I32'),
    (True, lambda t: t.pop(_GATE_UP.replace('gate_up', 'down')),
     'no tensor .*experts.down_proj'),
    (True, lambda t: t.update({_GATE_UP: t[_GATE_UP][:, :8]}),
     r'shape \[4, 8, 16\], but config.json implies \[4, 16, 16\]'),
])
def test_tensors_that_do_not_match_the_config_are_named(fused, change, match,
                                                        tmp_path):
  config = qwen3_like()
  hf_moe.export_checkpoint(config, _params(config), tmp_path)
  tensors = load_file(tmp_path / 'model.safetensors')
  if fused:
    tensors = _fuse(tensors, 'mlp.')
  change(tensors)
  save_file(tensors, str(tmp_path / 'model.safetensors'))
  with pytest.raises(UserInputError, match=match) as e:
    hf_moe.import_checkpoint(tmp_path)
  assert '\n' not in str(e.value)
