"""YaRN rotary scaling (moe_jax/models/yarn.py): a hand-computed case,
factor 1 against plain RoPE, the rotation itself, a gradient check, the
config section and config.json import/export, and bad input.

Its frequencies and factors against transformers', and whole DeepSeek-V3 /
Qwen3-MoE models with YaRN against transformers, are in
tests/test_models_yarn_hf_torch.py; MLA's float64 reference with YaRN in
tests/test_models_mla.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from moe_jax.config.default_config import get_default_config
from moe_jax.convert import hf_moe
from moe_jax.convert.hf_families import read_rope
from moe_jax.errors import UserInputError
from moe_jax.models import ModelConfig
from moe_jax.models.attention import rotary
from moe_jax.models.transformer import TransformerLM
from moe_jax.models.yarn import YarnConfig
from moe_jax.train.setup import model_config


def test_hand_computed_frequencies_and_factors():
  # Dh = 8, θ = 10^4: plain frequencies 1, 0.1, 0.01, 0.001. L0 = 4096:
  # dim(32) = 4·ln(4096 / 64π) / ln 10^4 = 1.31 -> floor 1,
  # dim(1) = 4·ln(4096 / 2π) / ln 10^4 = 2.81 -> ceil 3,
  # so ramp = clip((i - 1) / 2) = [0, 0, 1/2, 1]: dims 0 and 1 kept, dim 3
  # divided by s = 4, dim 2 half and half (0.01·(1/8 + 1/2)).
  y = YarnConfig(factor=4, original_max_len=4096)
  np.testing.assert_allclose(y.inv_freq(8, 1e4),
                             [1, 0.1, 0.01 * 0.625, 0.001 / 4], rtol=1e-12)
  # a = 0.1·ln 4 + 1; no MLA temperature without mscale_all_dim.
  assert y.rope_factor == pytest.approx(1.1386294361, rel=1e-9)
  assert y.mla_softmax_factor == 1.0
  # DeepSeek's mscale = mscale_all_dim: a = 1, the softmax takes m² instead.
  ds = YarnConfig(factor=4, original_max_len=4096, mscale=1.0,
                  mscale_all_dim=1.0)
  assert ds.rope_factor == 1.0
  assert ds.mla_softmax_factor == pytest.approx(1.1386294361 ** 2, rel=1e-9)
  # A stated attention factor wins; factor 1 stretches nothing.
  assert YarnConfig(factor=4, original_max_len=4096,
                    attention_factor=0.5).rope_factor == 0.5
  assert YarnConfig(factor=1, original_max_len=4096).rope_factor == 1.0


def test_untruncated_ramp_uses_the_fractional_bounds():
  y = YarnConfig(factor=4, original_max_len=4096, truncate=False)
  lo = 4 * math.log(4096 / (64 * math.pi)) / math.log(1e4)  # 1.31
  hi = 4 * math.log(4096 / (2 * math.pi)) / math.log(1e4)  # 2.81
  ramp2 = (2 - lo) / (hi - lo)
  np.testing.assert_allclose(
      y.inv_freq(8, 1e4), [1, 0.1, 0.01 * (ramp2 / 4 + 1 - ramp2), 0.001 / 4],
      rtol=1e-12)


def _x(shape=(2, 5, 3, 8)):
  return jax.random.normal(jax.random.key(0), shape)


def test_factor_one_is_plain_rope():
  x, positions = _x(), jnp.arange(5)
  plain = rotary(x, positions, 1e4)
  same = rotary(x, positions, 1e4, YarnConfig(factor=1, original_max_len=64))
  np.testing.assert_allclose(same, plain, rtol=0, atol=1e-6)
  # And a real stretch changes it (the test above is not vacuous).
  other = rotary(x, positions, 1e4, YarnConfig(factor=4, original_max_len=64))
  assert np.abs(np.asarray(other - plain)).max() > 0.1


def test_rotation_uses_the_scaled_frequencies_and_factor():
  y = YarnConfig(factor=4, original_max_len=4096)
  x = _x((1, 3, 1, 8))
  out = np.asarray(rotary(x, jnp.array([0, 7, 30]), 1e4, y))
  freq, a = y.inv_freq(8, 1e4), y.rope_factor
  for i, pos in enumerate((0, 7, 30)):
    v = np.asarray(x[0, i, 0], np.float64)
    cos, sin = np.cos(pos * freq), np.sin(pos * freq)
    want = a * np.concatenate([v[:4] * cos - v[4:] * sin,
                               v[:4] * sin + v[4:] * cos])
    np.testing.assert_allclose(out[0, i, 0], want, rtol=1e-5, atol=1e-5)


_MODEL = dict(vocab_size=16, d_model=16, num_layers=1, num_heads=2, d_ff=8,
              max_len=8, moe_every=0)
_YARN = dict(factor=4.0, original_max_len=2)


def test_gradients_through_a_yarn_model():
  model = TransformerLM(ModelConfig(**_MODEL, rope_scaling=_YARN),
                        rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  tokens = jnp.arange(8)[None] % 16

  @jax.jit
  def loss(state):
    logits, _ = nnx.merge(graphdef, state)(tokens)
    return jnp.mean(jax.nn.log_softmax(logits)[..., 0])

  check_grads(loss, (state,), order=1, modes=['rev'], eps=1e-3)


def test_config_file_section():
  c = get_default_config()
  c.model.update(position='rope')
  assert model_config(c).rope_scaling is None  # Off by default.
  c.model.rope_scaling.factor = 40
  c.model.rope_scaling.original_max_len = 4096
  c.model.rope_scaling.mscale_all_dim = 1.0
  assert model_config(c).rope_scaling == YarnConfig(
      factor=40.0, original_max_len=4096, mscale_all_dim=1.0)


@pytest.mark.parametrize('rope_scaling, match', [
    (dict(factor=0.5, original_max_len=8), r'model.rope_scaling.factor=0.5 '
     r'must be a number >= 1'),
    (dict(factor=2.0, original_max_len=0), 'original_max_len=0 must be a '
     'positive int'),
    (dict(factor=2.0, original_max_len=8, beta_fast=0), 'beta_fast=0 must'),
    (dict(factor=2.0, original_max_len=8, mscale=-1.0), 'mscale=-1.0 must be '
     'a number >= 0'),
    (dict(factor=2.0, original_max_len=8, attention_factor=0.0),
     'attention_factor=0.0 must be a positive number'),
    (dict(factor=2.0, original_max_len=8, truncate=1), 'truncate=1 must be '
     'True or False'),
    (dict(factor=0.0, original_max_len=0, beta_fast=16.0), r'beta_fast=16.0 '
     r'does nothing while model.rope_scaling.factor=0'),
    (dict(factor=2.0, scale=3), "model.rope_scaling has no field 'scale'"),
    (4.0, 'must be None, a YarnConfig or a mapping'),
])
def test_bad_config_is_one_line(rope_scaling, match):
  with pytest.raises(UserInputError, match=match) as e:
    ModelConfig(**_MODEL, rope_scaling=rope_scaling)
  assert '\n' not in str(e.value)


def test_learned_positions_refuse_rope_scaling():
  with pytest.raises(UserInputError, match="model.position='learned' must be "
                     "'rope' when model.rope_scaling is set"):
    ModelConfig(**_MODEL, position='learned', rope_scaling=_YARN)


_HF = dict(model_type='qwen3_moe', vocab_size=16, hidden_size=16,
           num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
           intermediate_size=8,
           moe_intermediate_size=4, num_experts=2, num_experts_per_tok=1,
           max_position_embeddings=32)


def test_config_json_yarn_imports_and_exports():
  hf = dict(_HF, rope_scaling={'rope_type': 'yarn', 'factor': 4.0,
                               'original_max_position_embeddings': 8,
                               'mscale': 0.7, 'mscale_all_dim': 0.7})
  config = hf_moe.config_from_hf(hf)
  assert config.rope_scaling == YarnConfig(
      factor=4.0, original_max_len=8, mscale=0.7, mscale_all_dim=0.7)
  back = hf_moe.config_to_hf(config)
  assert back['rope_scaling']['type'] == 'yarn'
  assert hf_moe.config_from_hf(back) == config
  # transformers' readings of absent keys: factor = max_position_embeddings
  # / original; the original length defaults to max_position_embeddings;
  # transformers 5's rope_parameters spelling reads the same.
  _, y = read_rope(dict(_HF, rope_parameters={
      'rope_type': 'yarn', 'original_max_position_embeddings': 8}), 1e4)
  assert (y.factor, y.original_max_len, y.beta_fast) == (4.0, 8, 32.0)
  _, y = read_rope(dict(_HF, rope_scaling={'type': 'yarn', 'factor': 2}), 1e4)
  assert y.original_max_len == 32
  # No scaling: nothing written, as before.
  plain = hf_moe.config_from_hf(_HF)
  assert plain.rope_scaling is None
  assert 'rope_scaling' not in hf_moe.config_to_hf(plain)


@pytest.mark.parametrize('scaling, match', [
    ({'rope_type': 'dynamic', 'factor': 2.0},
     "config.json rope_scaling type 'dynamic' is not modelled"),
    ({'type': 'longrope', 'factor': 2.0},
     "config.json rope_scaling type 'longrope' is not modelled"),
    ({'type': 'yarn', 'factor': 2.0, 'low_freq_factor': 1.0},
     "config.json rope_scaling key 'low_freq_factor' is not part of YaRN"),
])
def test_rope_scalings_we_lack_are_refused(scaling, match):
  with pytest.raises(UserInputError, match=match):
    hf_moe.config_from_hf(dict(_HF, rope_scaling=scaling))
