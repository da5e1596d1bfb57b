"""Multi-head latent attention (moe_jax/models/mla.py): a float64 reference
written from the formulas, a hand case, the absorbed decoding form against
the expanded one, gradients, and bad configs.

The comparison with transformers' DeepSeek models is in
tests/test_convert_deepseek_hf_torch.py; cached decoding of a whole model in
tests/test_generate.py.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from moe_jax.config.default_config import get_default_config
from moe_jax.errors import UserInputError
from moe_jax.models import KVCache, ModelConfig
from moe_jax.models.mla import MLAConfig, MultiHeadLatentAttention, off_section
from moe_jax.models.yarn import YarnConfig
from moe_jax.train.setup import model_config

D, H, L, THETA = 12, 3, 6, 100.0
CONFIGS = {
    'q_latent': MLAConfig(kv_lora_rank=5, qk_nope_head_dim=4,
                          qk_rope_head_dim=4, v_head_dim=3, q_lora_rank=7),
    'no_q_latent': MLAConfig(kv_lora_rank=5, qk_nope_head_dim=2,
                             qk_rope_head_dim=6, v_head_dim=4),
}
# With YaRN (models/yarn.py): mscale != mscale_all_dim, so both the rotated
# q and k (by a) and the softmax (by m(s, mscale_all_dim)²) are scaled.
CONFIGS['yarn'] = CONFIGS['q_latent']
YARN = {'yarn': YarnConfig(factor=4.0, original_max_len=2, mscale=1.0,
                           mscale_all_dim=0.5)}
# DeepSeek's softmax temperature m(s, mscale_all_dim)² by hand:
# (0.1·0.5·ln 4 + 1)².
TEMPERATURE = {'yarn': (0.05 * np.log(4.0) + 1) ** 2}
_call = nnx.jit(lambda module, x: module(x))
_cached = nnx.jit(lambda module, *args: module.cached(*args))


@pytest.fixture(scope='module')
def layers():
  out = {}
  for name, mla in CONFIGS.items():
    layer = MultiHeadLatentAttention(D, H, mla, init_scale=1.0,
                                     rngs=nnx.Rngs(0), rope_theta=THETA,
                                     rope_scaling=YARN.get(name))
    for i, norm in enumerate(n for n in (getattr(layer, 'q_norm', None),
                                         layer.kv_norm) if n is not None):
      # Ones at init: make a swapped or skipped norm show.
      norm.scale[...] = 1 + 0.5 * jax.random.normal(jax.random.key(i),
                                                    norm.scale.shape)
    out[name] = layer
  return out


def _x(seed=1, batch=2):
  return jax.random.normal(jax.random.key(seed), (batch, L, D))


def _rms(v, scale):
  return v / np.sqrt(np.mean(v ** 2, -1, keepdims=True) + 1e-6) * scale


def _rotate(v, pos, dr, yarn=None):
  """RoPE on the pairs (v_i, v_{i+Dr/2}) by angle pos·θ^(-2i/Dr), or by
  YaRN's frequencies and scaled by its attention factor."""
  half = dr // 2
  if yarn is None:
    angle, scale = pos * THETA ** (-2.0 * np.arange(half) / dr), 1.0
  else:
    angle, scale = pos * yarn.inv_freq(dr, THETA), yarn.rope_factor
  a, b = v[..., :half], v[..., half:]
  return scale * np.concatenate([a * np.cos(angle) - b * np.sin(angle),
                                 a * np.sin(angle) + b * np.cos(angle)], -1)


def _reference(layer, x):
  """The module docstring's formulas, token by token, head by head, in
  float64 with explicit per-head keys [k_nope, k_r] and values."""
  m, yarn = layer.mla, layer.rope_scaling
  temperature = next((t for name, t in TEMPERATURE.items()
                      if YARN[name] == yarn), 1.0)
  p = {k: np.asarray(v, np.float64)
       for k, v in nnx.to_flat_state(nnx.state(layer))}
  p = {'/'.join(map(str, k)): v for k, v in p.items()}
  x = np.asarray(x, np.float64)
  dn, dr, r = m.qk_nope_head_dim, m.qk_rope_head_dim, m.kv_lora_rank
  out = np.zeros_like(x)
  for b in range(x.shape[0]):
    if m.q_lora_rank is None:
      q = np.einsum('ld,dhk->lhk', x[b], p['wq'])
    else:
      q = np.einsum('lr,rhk->lhk', _rms(x[b] @ p['wq_a'], p['q_norm/scale']),
                    p['wq_b'])
    kv = x[b] @ p['wkv_a']
    c = _rms(kv[:, :r], p['kv_norm/scale'])
    for i in range(L):
      for h in range(H):
        qi = np.concatenate([q[i, h, :dn], _rotate(q[i, h, dn:], i, dr,
                                                   yarn)])
        keys = [np.concatenate([c[j] @ p['wkv_b'][:, h, :dn],
                                _rotate(kv[j, r:], j, dr, yarn)])
                for j in range(i + 1)]
        s = np.array([qi @ k for k in keys]) * temperature / np.sqrt(dn + dr)
        w = np.exp(s - s.max())
        w /= w.sum()
        v = np.stack([c[j] @ p['wkv_b'][:, h, dn:] for j in range(i + 1)])
        out[b, i] += (w @ v) @ p['wo'][h]
  return out


@pytest.mark.parametrize('name', list(CONFIGS))
def test_matches_a_float64_reference(layers, name):
  x = _x()
  ref = _reference(layers[name], x)
  np.testing.assert_allclose(_call(layers[name], x), ref, rtol=0, atol=1e-5 *
                             np.abs(ref).max())


def test_first_token_reads_only_its_own_value(layers):
  """Hand case: at position 0 the softmax has one entry, so the output is
  that token's value c·W_UV through W_O, whatever the queries are."""
  layer = layers['q_latent']
  x = _x()
  r, dn = layer.mla.kv_lora_rank, layer.mla.qk_nope_head_dim
  kv = x[:, 0] @ layer.wkv_a[...]
  c = kv[:, :r] * jax.lax.rsqrt(jnp.mean(kv[:, :r] ** 2, -1, keepdims=True)
                                + 1e-6) * layer.kv_norm.scale[...]
  v = jnp.einsum('br,rhk->bhk', c, layer.wkv_b[...][:, :, dn:])
  expected = jnp.einsum('bhk,hkd->bd', v, layer.wo[...])
  np.testing.assert_allclose(_call(layer, x)[:, 0], expected, atol=1e-5)


@pytest.mark.parametrize('name', list(CONFIGS))
def test_absorbed_cache_equals_expanded_keys(layers, name):
  """cached() never expands the latent (W_UK folded into the query, W_UV
  after the sum); token by token it gives __call__'s outputs, and the cache
  holds R + Dr numbers per token."""
  layer, mla = layers[name], CONFIGS[name]
  x = _x(2)
  full = _call(layer, x)
  latent = jnp.zeros((2, L, mla.kv_lora_rank))
  rope = jnp.zeros((2, L, mla.qk_rope_head_dim))
  for i in range(L):
    positions = jnp.full((2, 1), i)
    y, latent, rope = _cached(layer, x[:, i:i + 1], positions, latent, rope)
    np.testing.assert_allclose(y[:, 0], full[:, i], atol=1e-5)


def test_gradients_match_finite_differences(layers):
  # float32 (the latent norms compute in float32 whatever the input), so
  # check_grads' float32 tolerances.
  layer = layers['q_latent']
  graphdef, state = nnx.split(layer)
  r = jax.random.normal(jax.random.key(3), (1, L, D))

  @jax.jit
  def loss(state, x):
    return jnp.sum(nnx.merge(graphdef, state)(x) * r)

  x = _x(batch=1)
  check_grads(loss, (state, x), order=1, modes=['rev'], eps=1e-3)
  grads = jax.grad(loss)(state, x)
  assert all(np.any(g) for g in jax.tree.leaves(grads))


_MODEL = dict(vocab_size=16, d_model=D, num_layers=2, num_heads=H, d_ff=8,
              max_len=16, moe_every=0)


def test_model_config_takes_a_mapping_and_sizes_the_cache():
  mla = dataclasses.asdict(CONFIGS['q_latent'])
  config = ModelConfig(**_MODEL, mla=mla)
  assert config.mla == CONFIGS['q_latent']
  # A config file's section is off until kv_lora_rank is set.
  assert ModelConfig(**_MODEL, mla=off_section()).mla is None
  assert model_config(get_default_config()).mla is None
  assert ModelConfig(**_MODEL, mla={'kv_lora_rank': 8}).mla == MLAConfig(
      kv_lora_rank=8)
  cache = KVCache.zeros(config, 3, 10)
  assert cache.k[0].shape == (3, 10, 5) and cache.v[0].shape == (3, 10, 4)


_GOOD = dataclasses.asdict(CONFIGS['q_latent'])


@pytest.mark.parametrize('model,match', [
    (dict(mla={**_GOOD, 'qk_rope_head_dim': 3}), 'qk_rope_head_dim=3 must be even'),
    (dict(mla={**_GOOD, 'v_head_dim': 0}), r'v_head_dim=0 must be a positive'),
    (dict(mla={**_GOOD, 'kv_lora_rank': 0}),
     'qk_nope_head_dim=4 does nothing while model.mla.kv_lora_rank=0'),
    (dict(mla={**_GOOD, 'q_lora_rank': -1}), r'q_lora_rank=-1 must be a positive'),
    (dict(mla={**_GOOD, 'rank': 4}), "model.mla has no field 'rank'"),
    (dict(mla=4), 'model.mla=4 must be None'),
    (dict(mla=_GOOD, num_kv_heads=1), 'excludes model.num_kv_heads'),
    (dict(mla=_GOOD, position='learned'), "excludes model.position='learned'"),
    (dict(mla=_GOOD, qkv_bias=True), 'excludes model.qkv_bias=True'),
    (dict(mla=_GOOD, sliding_window=4), 'excludes model.sliding_window'),
    (dict(mla=_GOOD, qk_norm='per_head'), 'excludes model.qk_norm'),
    (dict(mla=_GOOD, head_dim=4), 'excludes model.head_dim'),
])
def test_bad_config_is_one_line(model, match):
  with pytest.raises(UserInputError, match=match) as e:
    ModelConfig(**{**_MODEL, **model})
  assert '\n' not in str(e.value)
