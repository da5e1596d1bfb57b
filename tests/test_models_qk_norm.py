"""QK-norm (OLMoE over all heads, Qwen3 per head) and a head width apart
from D/H: a hand-computed norm, the attention against a float64 reference,
the property that tells the two norms apart, gradients and bad fields.

Cached decoding with both is in tests/test_generate.py; the match with
transformers' OLMoE and Qwen3-MoE in tests/test_convert_hf_torch.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from moe_jax.errors import UserInputError
from moe_jax.models.attention import CausalSelfAttention
from moe_jax.models.config import ModelConfig
from moe_jax.models.norm import qk_norm

_call = nnx.jit(lambda module, x: module(x))
EPS = 1e-5


def _attention(kind, head_dim=6):
  # D = 16, H = 4, Hkv = 2, Dh = 6 (not D/H = 4), q/k scales away from 1.
  attn = CausalSelfAttention(16, 4, rope=True, init_scale=1.0,
                             rngs=nnx.Rngs(0), num_kv_heads=2, qk_norm=kind,
                             head_dim=head_dim, norm_eps=EPS, rope_theta=100.)
  rng = np.random.default_rng(1)
  for norm in (attn.q_norm, attn.k_norm):
    norm.scale[...] = rng.uniform(0.5, 2.0, norm.scale.shape)
  return attn


def test_the_norm_by_hand():
  # One head of Dh = 2 holding (3, 4): mean square 12.5, so (3, 4)/√12.5.
  # Over all heads, with a second head (0, 0): mean square 6.25, so /2.5.
  x = jnp.array([[[3., 4.], [0., 0.]]])  # [1, H=2, Dh=2]
  per_head = qk_norm('per_head', 2, 2, rngs=nnx.Rngs(0), eps=0.0)
  whole = qk_norm('all_heads', 2, 2, rngs=nnx.Rngs(0), eps=0.0)
  assert per_head.scale.shape == (2,) and whole.scale.shape == (2, 2)
  r = math.sqrt(12.5)
  np.testing.assert_allclose(per_head(x[:, :1])[0, 0], [3 / r, 4 / r],
                             rtol=1e-6)
  np.testing.assert_allclose(whole(x)[0], [[1.2, 1.6], [0, 0]], rtol=1e-6)
  whole.scale[...] = jnp.array([[2., 3.], [1., 1.]])  # Per (head, j).
  np.testing.assert_allclose(whole(x)[0], [[2.4, 4.8], [0, 0]], rtol=1e-6)


def _rope64(x, theta=100.):
  """Rotate-half RoPE in float64 on x [B, L, H, Dh]."""
  half = x.shape[-1] // 2
  angle = np.arange(x.shape[1])[:, None] * theta ** (-np.arange(half) / half)
  cos, sin = np.cos(angle)[:, None], np.sin(angle)[:, None]
  x1, x2 = x[..., :half], x[..., half:]
  return np.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def _reference(attn, x, kind):
  """The attention in float64: project, RMSNorm q and k, RoPE, causal."""
  w = lambda name: np.asarray(getattr(attn, name)[...], np.float64)
  x = np.asarray(x, np.float64)
  axes = (-1,) if kind == 'per_head' else (-2, -1)

  def norm(y, scale):
    ms = np.mean(y ** 2, axis=axes, keepdims=True)
    return y / np.sqrt(ms + EPS) * scale

  q = norm(np.einsum('bld,dhk->blhk', x, w('wq')),
           np.asarray(attn.q_norm.scale[...], np.float64))
  k = norm(np.einsum('bld,dhk->blhk', x, w('wk')),
           np.asarray(attn.k_norm.scale[...], np.float64))
  q, k = _rope64(q), _rope64(k)
  k, v = (np.repeat(a, 2, axis=2)
          for a in (k, np.einsum('bld,dhk->blhk', x, w('wv'))))
  s = np.einsum('blhk,bmhk->bhlm', q, k) / math.sqrt(q.shape[-1])
  length = x.shape[1]
  s = np.where(np.tril(np.ones((length, length), bool)), s, -np.inf)
  p = np.exp(s - s.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bhlm,bmhk,hkd->bld', p, v, w('wo'))


@pytest.mark.parametrize('kind', ['per_head', 'all_heads'])
def test_attention_with_qk_norm_equals_float64(kind):
  attn = _attention(kind)
  x = jax.random.normal(jax.random.key(2), (2, 7, 16)) * 3
  np.testing.assert_allclose(_call(attn, x), _reference(attn, x, kind),
                             rtol=2e-5, atol=2e-5)


def test_per_head_ignores_a_heads_scale_and_all_heads_does_not():
  # Scaling one head's query weights by 10: a per-head norm removes it; a
  # norm over all heads shifts weight between heads, so the output changes.
  x = jax.random.normal(jax.random.key(3), (1, 6, 16))
  for kind, same in (('per_head', True), ('all_heads', False)):
    attn = _attention(kind)
    before = _call(attn, x)
    attn.wq[...] = attn.wq[...].at[:, 1].multiply(10.)
    assert np.allclose(before, _call(attn, x), atol=1e-4) == same, kind


def test_gradients_through_the_norm_match_finite_differences():
  graphdef, state = nnx.split(_attention('all_heads'))
  x = jax.random.normal(jax.random.key(4), (1, 5, 16))
  probe = jax.random.normal(jax.random.key(5), (1, 5, 16))
  # The norm scales and every projection, as one pytree.
  loss = lambda state, x: jnp.sum(nnx.merge(graphdef, state)(x) * probe)
  check_grads(jax.jit(loss), (state, x), order=1, modes=['rev'], eps=1e-2,
              atol=2e-2, rtol=2e-2)


def test_no_qk_norm_adds_no_parameters():
  attn = nnx.eval_shape(lambda: CausalSelfAttention(
      16, 4, rope=True, init_scale=1.0, rngs=nnx.Rngs(0)))
  assert set(nnx.to_pure_dict(nnx.state(attn))) == {'wq', 'wk', 'wv', 'wo'}


_SMALL = dict(d_model=16, num_layers=1, num_heads=4, d_ff=8, max_len=8)


@pytest.mark.parametrize('field,named', [
    ({'qk_norm': 'heads'}, "model.qk_norm='heads'"),
    ({'head_dim': 0}, 'model.head_dim=0'),
    ({'head_dim': 5}, 'even head width'),
    ({'num_heads': 3}, 'model.num_heads=3 must divide'),
])
def test_bad_fields_name_the_field(field, named):
  with pytest.raises(UserInputError, match=named) as e:
    ModelConfig(**{**_SMALL, **field})
  assert '\n' not in str(e.value)


def test_head_dim_lets_heads_not_divide_d_model():
  config = ModelConfig(**{**_SMALL, 'num_heads': 3}, head_dim=4)
  assert config.head_width == 4
  assert ModelConfig(**_SMALL).head_width == 4
