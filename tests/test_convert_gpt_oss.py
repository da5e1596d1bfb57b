"""gpt-oss checkpoints without PyTorch: export -> import is bitwise, the
interleaved expert layout by hand, config.json's fields (YaRN included),
and one-line
errors (quantized weights, fields and tensors that do not fit).

(The comparison against `transformers` itself is
tests/test_convert_gpt_oss_hf_torch.py.)
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from moe_jax.convert import hf_moe
from moe_jax.core.config import MoEConfig
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.yarn import YarnConfig
from tests.test_convert_hf import _params, mixtral_like


def gpt_oss_like(**kw):
  # Dh = 6 (not D/H = 4), windows in layers 0 and 2, full attention in 1.
  moe = MoEConfig(num_experts=4, top_k=2, d_ff=8, router='topk',
                  expert_type='swiglu_clamped', use_bias=True,
                  dispatcher='dropless', z_loss_weight=0.0,
                  load_balance_weight=0.001)
  fields = dict(vocab_size=40, d_model=16, num_layers=3, num_heads=4,
                num_kv_heads=2, head_dim=6, d_ff=8, max_len=64, moe_every=1,
                norm_eps=1e-5, rope_theta=5e5, qkv_bias=True,
                attn_out_bias=True, attention_sinks=True, sliding_window=5,
                full_attention_every=2, moe=moe)
  fields.update(kw)
  return ModelConfig(**fields)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  config = gpt_oss_like()
  params = _params(config)
  path = tmp_path_factory.mktemp('gpt_oss')
  hf_moe.export_checkpoint(config, params, path)
  return config, params, path


def test_export_then_import_is_bitwise(exported):
  config, params, path = exported
  back_config, back = hf_moe.import_checkpoint(path)
  assert back_config == config
  flat, ref = jax.tree.leaves_with_path(back), jax.tree.leaves_with_path(params)
  assert [p for p, _ in flat] == [p for p, _ in ref]
  for (p, a), (_, b) in zip(flat, ref):
    assert np.array_equal(a, b), p


def test_interleaved_expert_layout_by_hand(exported):
  _, params, path = exported
  t = load_file(path / 'model.safetensors')
  ffn = params['blocks'][1]['ffn']
  gate_up = t['model.layers.1.mlp.experts.gate_up_proj']  # [E, D, 2F]
  assert gate_up.shape == (4, 16, 16)
  # Column 2j is the gate's j-th unit, 2j + 1 the up's (forward's ::2, 1::2).
  np.testing.assert_array_equal(gate_up[3, :, 2 * 5], ffn['wi_gate'][3, :, 5])
  np.testing.assert_array_equal(gate_up[3, :, 2 * 5 + 1], ffn['wi'][3, :, 5])
  bias = t['model.layers.1.mlp.experts.gate_up_proj_bias']  # [E, 2F]
  np.testing.assert_array_equal(bias[2, 0::2], ffn['bi_gate'][2])
  np.testing.assert_array_equal(bias[2, 1::2], ffn['bi'][2])
  np.testing.assert_array_equal(t['model.layers.1.mlp.experts.down_proj'],
                                ffn['wo'])  # [E, F, D] both.
  np.testing.assert_array_equal(t['model.layers.1.mlp.router.bias'],
                                ffn['router_bias_logits'])
  np.testing.assert_array_equal(t['model.layers.0.self_attn.sinks'],
                                params['blocks'][0]['attn']['sinks'])


def test_config_json_fields(exported):
  _, _, path = exported
  hf = json.loads((path / 'config.json').read_text())
  assert hf['architectures'] == ['GptOssForCausalLM']
  assert hf['layer_types'] == ['sliding_attention', 'full_attention',
                               'sliding_attention']
  assert (hf['num_local_experts'], hf['intermediate_size'], hf['head_dim'],
          hf['sliding_window'], hf['attention_bias']) == (4, 8, 6, 5, True)
  assert hf['rope_parameters'] == {'rope_type': 'default', 'rope_theta': 5e5}
  # transformers' default pattern (no layer_types): windows in even layers.
  del hf['layer_types']
  config = hf_moe.config_from_hf(hf)
  assert (config.full_attention_every, config.sliding_window) == (2, 5)
  # Every layer full attention: no window at all; every layer windowed: 0.
  n = hf['num_hidden_layers']
  assert hf_moe.config_from_hf(dict(
      hf, layer_types=['full_attention'] * n)).sliding_window is None
  assert hf_moe.config_from_hf(dict(
      hf, layer_types=['sliding_attention'] * n)).full_attention_every == 0


# A small YaRN, as in the transformers test: L0 = 8, s = 4, no truncation.
_YARN = YarnConfig(factor=4.0, original_max_len=8, truncate=False)


def test_yarn_config_round_trip():
  config = gpt_oss_like(rope_scaling=_YARN)
  hf = hf_moe.config_to_hf(config)
  rope = hf['rope_parameters']
  assert (rope['rope_type'], rope['rope_theta'], rope['factor'],
          rope['original_max_position_embeddings'], rope['truncate']) == (
              'yarn', 5e5, 4.0, 8, False)
  assert hf_moe.config_from_hf(hf) == config
  # The released config.json's form: rope_theta beside rope_scaling.
  released = {k: v for k, v in hf.items() if k != 'rope_parameters'}
  released.update(rope_theta=5e5, rope_scaling={
      k: v for k, v in rope.items() if k != 'rope_theta'})
  assert hf_moe.config_from_hf(released) == config


def test_absent_rope_parameters_is_transformers_yarn():
  # GptOssConfig fills this YaRN in (tests/test_convert_gpt_oss_hf_torch.py
  # checks it against transformers itself).
  hf = hf_moe.config_to_hf(gpt_oss_like())
  del hf['rope_parameters']
  config = hf_moe.config_from_hf(hf)
  assert config.rope_theta == 150000.0
  assert config.rope_scaling == YarnConfig(
      factor=32.0, original_max_len=4096, beta_fast=32.0, beta_slow=1.0,
      truncate=False)
  # And a model without YaRN writes rope_type 'default' explicitly.
  assert hf_moe.config_to_hf(gpt_oss_like())['rope_parameters'] == {
      'rope_theta': 5e5, 'rope_type': 'default'}


@pytest.mark.parametrize('change,match', [
    ({'quantization_config': {'quant_method': 'mxfp4'}},
     "quantization_config \\(quant_method='mxfp4'\\)"),
    ({'rope_parameters': {'rope_type': 'linear', 'factor': 2.0}},
     "rope_scaling type 'linear' is not modelled"),
    ({'swiglu_limit': 10.0}, 'swiglu_limit=10.0 is not modelled'),
    ({'swiglu_alpha': 1.0}, 'swiglu_alpha=1.0 is not modelled'),
    ({'layer_types': ['full_attention', 'sliding_attention',
                      'sliding_attention']}, 'layer_types=.* is not full'),
    ({'sliding_window': None}, 'sliding_window=null'),
])
def test_config_fields_we_cannot_honour_are_named(change, match):
  hf = hf_moe.config_to_hf(gpt_oss_like())
  hf.update(change)
  with pytest.raises(UserInputError, match=match) as e:
    hf_moe.config_from_hf(hf)
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('config,match', [
    (gpt_oss_like(attention_sinks=False), 'model.attention_sinks=False'),
    (gpt_oss_like(attn_out_bias=False), 'one attention_bias'),
    (gpt_oss_like(moe=dataclasses.replace(gpt_oss_like().moe,
                                          use_bias=False)), 'moe.use_bias'),
    (gpt_oss_like(first_dense_layers=1), 'dense layers'),
    # The other families cannot hold gpt-oss's features.
    (mixtral_like(attention_sinks=True), 'model.attention_sinks'),
    (mixtral_like(sliding_window=4, full_attention_every=2),
     'model.full_attention_every'),
])
def test_configs_gpt_oss_cannot_hold_are_refused(config, match):
  with pytest.raises(UserInputError, match=match) as e:
    hf_moe.config_to_hf(config)
  assert 'cannot export as' in str(e.value) and '\n' not in str(e.value)


_L1 = 'model.layers.1.'


@pytest.mark.parametrize('change,match', [
    # As OpenAI released the experts: MXFP4 blocks and scales.
    (lambda t: t.update({
        _L1 + 'mlp.experts.gate_up_proj_blocks': np.zeros((4, 16, 1, 16),
                                                          np.uint8),
        _L1 + 'mlp.experts.gate_up_proj_scales': np.zeros((4, 16, 1),
                                                          np.uint8)}),
     "MXFP4-quantized tensors .*gate_up_proj_blocks', 2 in all"),
    (lambda t: t.pop(_L1 + 'self_attn.sinks'), 'no tensor .*sinks'),
    (lambda t: t.pop(_L1 + 'mlp.experts.down_proj_bias'),
     'no tensor .*down_proj_bias'),
    (lambda t: t.update({_L1 + 'self_attn.extra': np.zeros(3, np.float32)}),
     "tensor .*self_attn.extra' .1 extra"),
    (lambda t: t.update({_L1 + 'mlp.router.bias': np.zeros(5, np.float32)}),
     r'shape \[5\], but config.json implies \[4\]'),
])
def test_tensors_that_do_not_match_are_named(exported, change, match,
                                             tmp_path):
  _, _, path = exported
  tensors = load_file(path / 'model.safetensors')
  change(tensors)
  save_file(tensors, str(tmp_path / 'model.safetensors'))
  (tmp_path / 'config.json').write_text((path / 'config.json').read_text())
  with pytest.raises(UserInputError, match=match) as e:
    hf_moe.import_checkpoint(tmp_path)
  assert '\n' not in str(e.value)
