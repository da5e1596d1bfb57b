"""YaRN (moe_jax/models/yarn.py) against transformers 5.23: the frequencies
and attention factor of released-style configs, and tiny random DeepSeek-V3
and Qwen3-MoE models with YaRN, imported and exported, on sequences longer
than the pretraining context L0.

Needs the optional test extras (pip install -r requirements-hf.txt).
"""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.convert import hf_moe
from moe_jax.convert.hf_families import read_rope
from moe_jax.models.transformer import TransformerLM
from tests import _hf_models

torch, transformers = _hf_models.import_torch()
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # pylint: disable=g-import-not-at-top,wrong-import-position
from test_convert_deepseek_hf_torch import _COMMON, _relative_error  # pylint: disable=g-import-not-at-top,wrong-import-position

_DS = {'type': 'yarn', 'factor': 40, 'original_max_position_embeddings': 4096,
       'beta_fast': 32, 'beta_slow': 1}
# (config class, config.json fields): DeepSeek-V3's and V2's released
# rope_scaling (V3: mscale = mscale_all_dim = 1, V2: 0.707), Qwen3's long-
# context recipe (factor 4 over 32768), and gpt-oss-style settings
# (truncate off, a stated attention factor) on the Qwen3 class.
RELEASED = {
    'deepseek_v3': (transformers.DeepseekV3Config, dict(
        qk_rope_head_dim=64, max_position_embeddings=163840,
        rope_scaling=dict(_DS, mscale=1.0, mscale_all_dim=1.0))),
    'deepseek_v2': (transformers.DeepseekV2Config, dict(
        qk_rope_head_dim=64, max_position_embeddings=163840,
        rope_scaling=dict(_DS, mscale=0.707, mscale_all_dim=0.707))),
    'qwen3': (transformers.Qwen3MoeConfig, dict(
        head_dim=128, rope_theta=1e6, max_position_embeddings=131072,
        rope_scaling={'rope_type': 'yarn', 'factor': 4.0,
                      'original_max_position_embeddings': 32768})),
    'untruncated': (transformers.Qwen3MoeConfig, dict(
        head_dim=64, rope_theta=150000.0, max_position_embeddings=131072,
        rope_scaling={'rope_type': 'yarn', 'factor': 32.0, 'beta_fast': 32.0,
                      'beta_slow': 1.0, 'truncate': False,
                      'attention_factor': 1.2,
                      'original_max_position_embeddings': 4096})),
}


@pytest.mark.parametrize('name', list(RELEASED))
def test_frequencies_and_factors_equal_transformers(name):
  cls, fields = RELEASED[name]
  config = cls(**fields)
  inv_freq, factor = ROPE_INIT_FUNCTIONS['yarn'](config)
  theta, yarn = read_rope(fields, 1e4)
  ours = yarn.inv_freq(config.head_dim, theta)
  # transformers computes in float32: agreement to its rounding.
  np.testing.assert_allclose(ours, inv_freq.numpy(), rtol=1e-6)
  assert yarn.rope_factor == pytest.approx(factor, rel=1e-12)
  if name.startswith('deepseek'):  # yarn_apply_mscale's extra temperature.
    module = transformers.models.deepseek_v3.modeling_deepseek_v3
    scale = module.yarn_apply_mscale(config.rope_parameters, 1.0)
    assert yarn.mla_softmax_factor == pytest.approx(scale, rel=1e-12)
    assert scale > 1.5


# Tiny models at L0 = 8 with s = 4, run on 24 tokens: positions past L0 see
# the stretched frequencies. mscale != mscale_all_dim in V3 so that both the
# rotary factor and MLA's temperature differ from 1. (V2 runs the same MLA
# code; its released factors are checked above.)
_YARN = {'type': 'yarn', 'factor': 4.0, 'original_max_position_embeddings': 8}
# The DeepSeek torch tests' tiny model, with two layers and a wider Dr.
_DEEPSEEK = dict(_COMMON, num_hidden_layers=2, qk_rope_head_dim=8,
                 max_position_embeddings=32)
TINY = {
    'deepseek_v3': (transformers.DeepseekV3Config, dict(
        _DEEPSEEK, q_lora_rank=24, routed_scaling_factor=2.5,
        rope_scaling=dict(_YARN, mscale=1.0, mscale_all_dim=0.5))),
    'qwen3_moe': (transformers.Qwen3MoeConfig, dict(
        vocab_size=64, hidden_size=32, num_attention_heads=4,
        num_key_value_heads=2, num_experts_per_tok=2, num_hidden_layers=2,
        intermediate_size=40, moe_intermediate_size=12, num_experts=4,
        head_dim=12, norm_topk_prob=True, initializer_range=0.1,
        rms_norm_eps=1e-5, rope_theta=5e5, max_position_embeddings=32,
        tie_word_embeddings=False, rope_scaling=_YARN)),
}
TOKENS = np.random.default_rng(0).integers(0, 64, (2, 24))
_forward = nnx.jit(lambda model, tokens: model(tokens)[0])


@pytest.mark.parametrize('name', list(TINY))
def test_models_with_yarn_match_transformers(name, tmp_path):
  cls, fields = TINY[name]
  torch.manual_seed(0)
  hf = transformers.AutoModelForCausalLM.from_config(cls(**fields)).eval()
  hf.save_pretrained(tmp_path / 'hf')
  ref = _hf_models.logits(torch, hf, TOKENS)
  ours = _forward(hf_moe.load_model(tmp_path / 'hf'), jnp.asarray(TOKENS))
  imported = _relative_error(ours, ref)

  config, params = hf_moe.import_checkpoint(tmp_path / 'hf')
  hf_moe.export_checkpoint(config, params, tmp_path / 'back')
  back = type(hf).from_pretrained(tmp_path / 'back').eval()
  exported = _relative_error(_hf_models.logits(torch, back, TOKENS), ours)
  # The same weights without YaRN give other logits: the test can fail.
  without = _relative_error(_forward(_model(dataclasses.replace(
      config, rope_scaling=None), params), jnp.asarray(TOKENS)), ref)
  print(f'{name} with YaRN: max |logit difference| / max |logit|: HF -> ours '
        f'{imported:.1e}, ours -> HF {exported:.1e}, without YaRN '
        f'{without:.1e}')
  assert imported < 1e-4 and exported < 1e-4, (imported, exported)
  assert without > 1e-3, without


def _model(config, params):
  graphdef, state = nnx.split(nnx.eval_shape(
      lambda: TransformerLM(config, rngs=nnx.Rngs(0))))
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)
