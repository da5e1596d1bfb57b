"""The DeepSeek-V2/V3 converter without PyTorch (moe_jax/convert/hf_deepseek.py):
config and weight round trips, and a one-line refusal for every config
field it cannot honour. The comparison with transformers is in
tests/test_convert_deepseek_hf_torch.py.
"""

import dataclasses
import json

import jax
import numpy as np
import pytest
from flax import nnx

from moe_jax.convert import hf_deepseek, hf_moe
from moe_jax.convert.safetensors_dir import write_tensors
from moe_jax.core.config import MoEConfig
from moe_jax.errors import UserInputError
from moe_jax.models import ModelConfig, TransformerLM

_MLA = dict(kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4,
            v_head_dim=4)
_V3_ROUTER = dict(n_group=2, topk_group=1, routed_scaling_factor=2.5,
                  bias_update_rate=hf_deepseek.V3_BIAS_UPDATE_RATE)
_V2_ROUTER = dict(score='softmax', n_group=2, topk_group=1, group_score='max',
                  renormalize=False, routed_scaling_factor=16.0)


def _config(router=None, q_lora_rank=6, **moe):
  moe = MoEConfig(**{
      'num_experts': 4, 'top_k': 2, 'router': 'deepseek', 'd_ff': 8,
      'expert_type': 'swiglu', 'dispatcher': 'dropless',
      'num_shared_experts': 1, 'load_balance_weight': 0.0,
      'z_loss_weight': 0.0,
      'router_options': {'deepseek': _V3_ROUTER if router is None else router},
      **moe})
  return ModelConfig(vocab_size=32, d_model=16, num_layers=2, num_heads=2,
                     d_ff=24, max_len=16, moe_every=1, first_dense_layers=1,
                     norm_eps=1e-5, moe=moe,
                     mla=dict(_MLA, q_lora_rank=q_lora_rank))


@pytest.mark.parametrize('config,model_type', [
    (_config(), 'deepseek_v3'),
    (_config(_V2_ROUTER, q_lora_rank=None), 'deepseek_v2')])
def test_config_round_trip(config, model_type):
  hf = hf_moe.config_to_hf(config)
  assert hf['model_type'] == model_type
  assert hf_moe.config_from_hf(json.loads(json.dumps(hf))) == config


@pytest.mark.parametrize('router,q_lora_rank', [(None, 6), (_V2_ROUTER, None)])
def test_weights_round_trip(router, q_lora_rank, tmp_path):
  """Export then import gives every parameter back exactly (the RoPE rows
  are reordered one way and back), and the written tensors are DeepSeek's."""
  config = _config(router, q_lora_rank)
  model = TransformerLM(config, rngs=nnx.Rngs(0))
  params = nnx.to_pure_dict(nnx.state(model))
  hf_moe.export_checkpoint(config, params, tmp_path)
  back_config, back = hf_moe.import_checkpoint(tmp_path)
  assert back_config == config
  flat = lambda t: dict(jax.tree_util.tree_flatten_with_path(t)[0])
  ours, theirs = flat(params), flat(back)
  assert ours.keys() == theirs.keys()
  for key, value in ours.items():
    np.testing.assert_array_equal(theirs[key], value, err_msg=str(key))
  # Stored interleaved: the k_r rows of wkv_a [D, R + Dr] come in the order
  # evens-then-odds of ours reversed, i.e. ours [a0 a1 b0 b1] as a0 b0 a1 b1.
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  stored = load_file(str(tmp_path / 'model.safetensors'))
  kv_a = stored['model.layers.0.self_attn.kv_a_proj_with_mqa.weight']  # [R+Dr, D]
  ours_rope = np.asarray(params['blocks'][0]['attn']['wkv_a'])[:, 8:].T
  np.testing.assert_array_equal(kv_a[8:], ours_rope[[0, 2, 1, 3]])


def test_v3_without_a_bias_exports_a_zero_bias(tmp_path):
  config = _config(dict(_V3_ROUTER, bias_update_rate=0.0))
  model = TransformerLM(config, rngs=nnx.Rngs(0))
  hf_moe.export_checkpoint(config, nnx.state(model), tmp_path)
  _, params = hf_moe.import_checkpoint(tmp_path)
  np.testing.assert_array_equal(params['blocks'][1]['ffn']['router_bias'],
                                np.zeros(4))


_V3_HF = hf_moe.config_to_hf(_config())
_V2_HF = hf_moe.config_to_hf(_config(_V2_ROUTER, q_lora_rank=None))


@pytest.mark.parametrize('hf,change,match', [
    (_V3_HF, dict(num_key_value_heads=1), 'num_key_value_heads=1'),
    (_V3_HF, dict(hidden_act='gelu'), "hidden_act='gelu'"),
    (_V3_HF, dict(attention_bias=True), 'attention_bias=true'),
    (_V2_HF, dict(mlp_bias=True), 'mlp_bias=true'),
    (_V3_HF, dict(moe_layer_freq=2), 'moe_layer_freq=2'),
    (_V3_HF, dict(n_shared_experts=0), 'n_shared_experts=0'),
    (_V3_HF, dict(scoring_func='softmax'), "scoring_func='softmax'"),
    (_V2_HF, dict(scoring_func='sigmoid'), "scoring_func='sigmoid'"),
    (_V3_HF, dict(topk_method='greedy'), "topk_method='greedy'"),
    (_V2_HF, dict(topk_method='noaux_tc'), "topk_method='noaux_tc'"),
    (_V2_HF, dict(norm_topk_prob=True), 'norm_topk_prob=true'),
    # YaRN imports (tests/test_models_yarn.py); other scalings do not.
    (_V3_HF, dict(rope_scaling={'type': 'dynamic', 'factor': 40}),
     "rope_scaling type 'dynamic' is not modelled"),
])
def test_unmodelled_fields_are_refused(hf, change, match):
  with pytest.raises(UserInputError, match=match) as e:
    hf_moe.config_from_hf({**hf, **change})
  assert '\n' not in str(e.value)


@pytest.mark.parametrize('config,match', [
    (dataclasses.replace(_config(), moe=MoEConfig(
        num_experts=4, top_k=2, router='topk', d_ff=8, expert_type='swiglu',
        num_shared_experts=1)), "moe.router='topk'"),
    (_config(dict(_V2_ROUTER, renormalize=True)), 'renormalize=True'),
    (_config(num_shared_experts=0), 'num_shared_experts < 1'),
    (_config(expert_type='gelu'), "expert_type='gelu'"),
    (dataclasses.replace(_config(), moe_every=2), 'moe_every=2'),
])
def test_unexportable_configs_are_refused(config, match):
  with pytest.raises(UserInputError, match=match) as e:
    hf_moe.config_to_hf(config)
  assert '\n' not in str(e.value) and 'DeepSeek' in str(e.value)


def test_absent_keys_take_transformers_defaults():
  # Left out of config.json, these read as transformers' class defaults
  # (hf_families.py; checked in tests/test_convert_hf_torch.py), which
  # differ between V2 and V3.
  absent = ('q_lora_rank', 'first_k_dense_replace', 'n_shared_experts',
            'routed_scaling_factor', 'max_position_embeddings', 'n_group',
            'topk_group', 'norm_topk_prob')
  # Room for V3's 3 dense layers and 8 groups.
  v3 = dict(_V3_HF, num_hidden_layers=4, n_routed_experts=16)
  v3 = hf_moe.config_from_hf({k: v for k, v in v3.items() if k not in absent})
  o = v3.moe.router_options
  assert (v3.mla.q_lora_rank, v3.first_dense_layers, v3.max_len,
          v3.moe.num_shared_experts) == (1536, 3, 4096, 1)
  assert (o.routed_scaling_factor, o.n_group, o.topk_group,
          o.renormalize) == (2.5, 8, 4, True)
  v2 = hf_moe.config_from_hf({k: v for k, v in _V2_HF.items()
                              if k not in absent + ('topk_method',)})
  o = v2.moe.router_options
  assert (v2.mla.q_lora_rank, v2.first_dense_layers, v2.max_len,
          v2.moe.num_shared_experts) == (1536, 0, 2048, 2)
  assert (o.routed_scaling_factor, o.n_group, o.renormalize) == (1.0, 1,
                                                                 False)


@pytest.mark.parametrize('mtp_layers,layer,refused', [
    (1, 2, False),  # V3's one MTP layer after the 2 decoder layers: skipped.
    (None, 2, False),  # Absent: transformers' default, 1.
    (0, 2, True),
    (1, 3, True),  # Past the MTP layers: a tensor the config lacks.
])
def test_multi_token_prediction_layers_are_skipped(mtp_layers, layer,
                                                   refused, tmp_path):
  config = _config()
  params = nnx.to_pure_dict(nnx.state(TransformerLM(config,
                                                    rngs=nnx.Rngs(0))))
  hf_moe.export_checkpoint(config, params, tmp_path)
  hf = json.loads((tmp_path / 'config.json').read_text())
  hf.pop('num_nextn_predict_layers')
  if mtp_layers is not None:
    hf['num_nextn_predict_layers'] = mtp_layers
  (tmp_path / 'config.json').write_text(json.dumps(hf))
  # As V3 stores its MTP layer: a decoder layer plus its own projections.
  write_tensors(tmp_path / 'mtp', {
      f'model.layers.{layer}.eh_proj.weight': np.ones((16, 32), np.float32),
      f'model.layers.{layer}.self_attn.kv_a_layernorm.weight':
          np.ones(8, np.float32)})
  (tmp_path / 'mtp' / 'model.safetensors').rename(tmp_path / 'mtp.safetensors')
  if refused:
    with pytest.raises(UserInputError, match=f"'model.layers.{layer}.eh_proj"):
      hf_moe.import_checkpoint(tmp_path)
  else:
    _, back = hf_moe.import_checkpoint(tmp_path)
    jax.tree.map(np.testing.assert_array_equal, back, params)
