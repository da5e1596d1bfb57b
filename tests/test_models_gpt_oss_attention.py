"""gpt-oss's attention features: sinks by hand and against a float64
reference (with q/k/v/o biases and a window), the sink's gradient against
central differences, the per-layer window pattern, and one-line errors.
(Cached decoding with all of them: tests/test_generate.py; against
transformers: tests/test_convert_gpt_oss_hf_torch.py.)
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.errors import UserInputError
from moe_jax.models.attention import (CausalSelfAttention, rotary,
                                      softmax_with_sinks)
from moe_jax.models.config import ModelConfig

_call = nnx.jit(lambda module, x: module(x))
H, HKV, DH, D, LEN, W = 4, 2, 6, 16, 7, 3


def test_softmax_with_a_sink_by_hand():
  # Scores (0, ln 2), sink 0: e^0 + e^ln2 + e^0 = 4, so the keys get 1/4 and
  # 2/4 and the sink (no value) the last 1/4.
  scores = jnp.array([[0.0, np.log(2.0)]])
  np.testing.assert_allclose(softmax_with_sinks(scores, jnp.zeros(())),
                             [[0.25, 0.5]], rtol=1e-6)
  # A sink far below every score is no sink; None is the plain softmax.
  np.testing.assert_allclose(softmax_with_sinks(scores, jnp.array(-1e4)),
                             jax.nn.softmax(scores), rtol=1e-6)
  np.testing.assert_array_equal(softmax_with_sinks(scores, None),
                                jax.nn.softmax(scores))


def _attention(**kwargs):
  attn = CausalSelfAttention(
      D, H, rope=True, init_scale=1.0, rngs=nnx.Rngs(0), num_kv_heads=HKV,
      head_dim=DH, qkv_bias=True, out_bias=True, sinks=True, **kwargs)
  rng = np.random.default_rng(0)  # Biases and sinks start at 0: draw them.
  for name in ('bq', 'bk', 'bv', 'bo', 'sinks'):
    param = getattr(attn, name)
    param[...] = jnp.asarray(rng.normal(size=param.shape), jnp.float32)
  return attn


def _reference(attn, x, window):
  """float64: per head h (kv head h // 2), softmax over the visible j of
  q_i·k_j / sqrt(Dh) and the sink, then Σ_j w_j v_j, wo and bo."""
  f64 = lambda a: np.asarray(a, np.float64)
  q, k, v = (f64(attn._project(x, n)) for n in 'qkv')  # pylint: disable=protected-access
  pos = jnp.arange(LEN)
  q = f64(rotary(jnp.asarray(q, jnp.float32), pos))
  k = f64(rotary(jnp.asarray(k, jnp.float32), pos))
  sinks = f64(attn.sinks[...])
  out = np.zeros(q.shape)
  for i in range(LEN):
    j = np.arange(max(0, i - window + 1) if window else 0, i + 1)
    for h in range(H):
      s = np.einsum('bk,bjk->bj', q[:, i, h], k[:, j, h // 2]) / np.sqrt(DH)
      top = np.maximum(s.max(-1, keepdims=True), sinks[h])
      e = np.exp(s - top)
      w = e / (e.sum(-1, keepdims=True) + np.exp(sinks[h] - top))
      out[:, i, h] = np.einsum('bj,bjk->bk', w, v[:, j, h // 2])
  return (np.einsum('blhk,hkd->bld', out, f64(attn.wo[...])) +
          f64(attn.bo[...]))


@pytest.mark.parametrize('window', [None, W])
def test_sinks_and_biases_match_a_float64_reference(window):
  attn = _attention(sliding_window=window)
  x = jax.random.normal(jax.random.key(1), (2, LEN, D))
  y = _call(attn, x)
  np.testing.assert_allclose(y, _reference(attn, x, window), rtol=1e-5,
                             atol=1e-5)
  # Not degenerate: the sinks take a share (equal sinks at -inf differ).
  attn.sinks[...] = jnp.full((H,), -1e4)
  assert not np.allclose(_call(attn, x), y, atol=1e-3)


def test_sink_gradient_matches_central_differences():
  attn = _attention(sliding_window=W)
  x = jax.random.normal(jax.random.key(2), (1, LEN, D))
  r = jax.random.normal(jax.random.key(3), (1, LEN, D))
  loss = lambda module: jnp.sum(module(x) * r)
  grad = np.asarray(nnx.jit(nnx.grad(loss))(attn)['sinks'][...])
  loss, sinks, eps = nnx.jit(loss), np.asarray(attn.sinks[...]), 1e-2
  for h in range(H):
    values = []
    for sign in (1, -1):
      attn.sinks[...] = jnp.asarray(sinks).at[h].add(sign * eps)
      values.append(float(loss(attn)))
    fd = (values[0] - values[1]) / (2 * eps)
    np.testing.assert_allclose(grad[h], fd, rtol=2e-3, atol=2e-4)
    assert abs(grad[h]) > 1e-3


def test_full_attention_every_sets_each_layers_window():
  config = ModelConfig(vocab_size=8, d_model=D, num_layers=4, num_heads=H,
                       d_ff=8, moe_every=0, sliding_window=W,
                       full_attention_every=2)
  # gpt-oss / transformers' default layer_types: windows in even layers.
  assert [config.layer_window(i) for i in range(4)] == [W, None, W, None]
  every = ModelConfig(vocab_size=8, d_model=D, num_layers=3, num_heads=H,
                      d_ff=8, moe_every=0, sliding_window=W)
  assert [every.layer_window(i) for i in range(3)] == [W, W, W]


@pytest.mark.parametrize('fields,words', [
    (dict(full_attention_every=2),
     'model.full_attention_every=2 must come with model.sliding_window'),
    (dict(full_attention_every=-1, sliding_window=4),
     'model.full_attention_every=-1'),
    (dict(attention_sinks=1), 'model.attention_sinks=1'),
    (dict(attention_sinks=True, mla=dict(kv_lora_rank=8)),
     'model.mla is set, which excludes model.attention_sinks'),
])
def test_bad_fields_are_one_line(fields, words):
  with pytest.raises(UserInputError, match=words.replace('.', r'\.')) as e:
    ModelConfig(vocab_size=8, d_model=D, num_layers=2, num_heads=H, d_ff=8,
                **fields)
  assert '\n' not in str(e.value)
