"""Model features real architectures need: GQA, tied embeddings, any V,
norm ε, RoPE θ, leading dense layers, q/k/v biases, the Qwen shared-expert
gate and non-renormalised top-k gates."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.core.routing import topk as topk_lib
from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply, shared_experts
from moe_jax.errors import UserInputError
from moe_jax.models.attention import CausalSelfAttention, rotary
from moe_jax.models.config import ModelConfig
from moe_jax.models.param_count import count_params
from moe_jax.models.transformer import RMSNorm, TransformerLM

# Eager op-by-op dispatch is slower than one small compile here.
_call = nnx.jit(lambda module, x: module(x))

_SMALL = dict(d_model=16, num_layers=2, num_heads=4, d_ff=32, max_len=8,
              moe=MoEConfig(num_experts=4, d_ff=16))


def _attention(kv_heads, **kwargs):
  return CausalSelfAttention(16, 4, rope=True, init_scale=1.0,
                             rngs=nnx.Rngs(0), num_kv_heads=kv_heads, **kwargs)


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
  gqa = _attention(2)
  assert gqa.wk.shape == (16, 2, 4) and gqa.wq.shape == (16, 4, 4)
  mha = _attention(4)
  mha.wq[...], mha.wo[...] = gqa.wq[...], gqa.wo[...]
  # Query heads 0, 1 read kv head 0; heads 2, 3 read kv head 1.
  mha.wk[...] = gqa.wk[...][:, [0, 0, 1, 1]]
  mha.wv[...] = gqa.wv[...][:, [0, 0, 1, 1]]
  x = jax.random.normal(jax.random.key(1), (2, 8, 16))
  y = _call(gqa, x)
  np.testing.assert_allclose(y, _call(mha, x), rtol=1e-6, atol=1e-6)
  # And GQA differs from other groupings (kv heads 0,1,0,1).
  mha.wk[...] = gqa.wk[...][:, [0, 1, 0, 1]]
  assert not np.allclose(y, _call(mha, x), atol=1e-3)


def test_sliding_window_attends_to_the_last_w_positions():
  # float64 reference: softmax over j in (i - W, i] of q_i·k_j / sqrt(Dh).
  attn = _attention(2, sliding_window=3)
  x = jax.random.normal(jax.random.key(2), (2, 8, 16))
  y = np.asarray(_call(attn, x), np.float64)
  q, k, v = (np.asarray(attn._project(x, n), np.float64) for n in 'qkv')
  from moe_jax.models.attention import rotary  # pylint: disable=g-import-not-at-top
  pos = jnp.arange(8)
  q = np.asarray(rotary(jnp.asarray(q, jnp.float32), pos), np.float64)
  k = np.asarray(rotary(jnp.asarray(k, jnp.float32), pos), np.float64)
  k, v = np.repeat(k, 2, axis=2), np.repeat(v, 2, axis=2)
  out = np.zeros(q.shape)
  for i in range(8):
    j = np.arange(max(0, i - 2), i + 1)
    s = np.einsum('bhk,bjhk->bhj', q[:, i], k[:, j]) / 2.0
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    out[:, i] = np.einsum('bhj,bjhk->bhk', w, v[:, j])
  ref = np.einsum('blhk,hkd->bld', out, np.asarray(attn.wo[...], np.float64))
  np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
  # A window as long as the sequence is no window, bit for bit.
  wide = _attention(2, sliding_window=8)
  full = _attention(2)
  np.testing.assert_array_equal(_call(wide, x), _call(full, x))
  assert not np.allclose(y, _call(full, x), atol=1e-3)


def test_qkv_bias_shifts_the_projections():
  att = _attention(2, qkv_bias=True)
  assert att.bq.shape == (4, 4) and att.bk.shape == (2, 4)
  x = jnp.zeros((1, 3, 16))
  att.bv[...] = jnp.ones((2, 4))
  # Zero input: q = k = 0, so attention is uniform and the output is
  # wo applied to v = 1 on every head.
  expected = jnp.einsum('hk,hkd->d', jnp.ones((4, 4)), att.wo[...])
  np.testing.assert_allclose(_call(att, x)[0], jnp.tile(expected, (3, 1)), rtol=1e-5)


def test_rotary_base_sets_the_second_frequency():
  # Dh = 4: pairs (x0, x2) turn at θ^0 = 1 rad/position, (x1, x3) at
  # θ^(-1/2), i.e. 0.1 rad for θ = 100.
  x = jnp.eye(4)[:2][None, None]  # [1, 1, 2, 4]: e0 and e1 as two heads.
  out = rotary(jnp.broadcast_to(x, (1, 2, 2, 4)), jnp.arange(2), base=100.0)
  np.testing.assert_allclose(out[0, 1, 0], [math.cos(1), 0, math.sin(1), 0],
                             atol=1e-6)
  np.testing.assert_allclose(out[0, 1, 1], [0, math.cos(.1), 0, math.sin(.1)],
                             atol=1e-6)
  np.testing.assert_allclose(out[0, 0], x[0, 0], atol=1e-7)  # position 0


def test_rmsnorm_epsilon_is_used():
  norm = RMSNorm(2, rngs=nnx.Rngs(0), eps=1.0)
  # mean square 1, so x / sqrt(1 + ε) = x / sqrt(2).
  np.testing.assert_allclose(norm(jnp.ones((2,))), [2 ** -0.5] * 2, rtol=1e-6)
  model = nnx.eval_shape(lambda: TransformerLM(
      ModelConfig(**_SMALL, norm_eps=1e-5, rope_theta=5e5), rngs=nnx.Rngs(0)))
  assert model.final_norm.eps == 1e-5
  assert all(b.attn_norm.eps == b.ffn_norm.eps == 1e-5 for b in model.blocks)
  assert all(b.attn.rope_theta == 5e5 for b in model.blocks)


def test_tied_embeddings_share_the_matrix_and_any_vocabulary_works():
  untied = TransformerLM(ModelConfig(**_SMALL, vocab_size=1000),
                         rngs=nnx.Rngs(0))
  tied = TransformerLM(ModelConfig(**_SMALL, vocab_size=1000,
                                   tie_embeddings=True), rngs=nnx.Rngs(0))
  assert not hasattr(tied, 'head')
  count = lambda m: count_params(nnx.state(m, nnx.Param), 1, 4)
  assert count(untied)[0] - count(tied)[0] == 16 * 1000
  tokens = jnp.array([[3, 999, 0, 512]])
  logits, _ = _call(tied, tokens)
  assert logits.shape == (1, 4, 1000)
  # logits = final_norm(h) · Eᵀ: a tied embedding row scaled by c scales its
  # logit (and only its) by c.
  tied.embed[...] = tied.embed[...].at[7].multiply(3.0)
  logits3, _ = _call(tied, tokens)
  np.testing.assert_allclose(logits3[..., 7], 3 * logits[..., 7], rtol=1e-5)
  np.testing.assert_allclose(logits3[..., 8], logits[..., 8], rtol=1e-6)


def test_first_dense_layers_keep_a_dense_ffn():
  cfg = ModelConfig(**{**_SMALL, 'num_layers': 4}, moe_every=1,
                    first_dense_layers=1)
  assert [cfg.is_moe_layer(i) for i in range(4)] == [False, True, True, True]
  cfg = ModelConfig(**{**_SMALL, 'num_layers': 4}, moe_every=2,
                    first_dense_layers=2)
  assert [cfg.is_moe_layer(i) for i in range(4)] == [False, False, False, True]


def test_top_k_without_renormalisation_keeps_softmax_probabilities():
  logits = jnp.log(jnp.array([[[0.5, 0.3, 0.2]]]))
  route = jax.jit(topk_lib.top_k, static_argnames=('capacity', 'k',
                                                    'renormalize'))
  plan, _ = route(logits, capacity=None, k=2, renormalize=False)
  np.testing.assert_allclose(plan.combine_weights[0, 0], [0.5, 0.3], rtol=1e-6)
  plan, _ = route(logits, capacity=None, k=2)
  np.testing.assert_allclose(plan.combine_weights[0, 0], [0.625, 0.375],
                             rtol=1e-6)


def test_shared_expert_gate_scales_the_shared_output():
  d, fs = 4, 6
  rng = np.random.default_rng(0)
  params = {'shared_wi': jnp.asarray(rng.normal(size=(d, fs)), jnp.float32),
            'shared_wo': jnp.asarray(rng.normal(size=(fs, d)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(1, 3, d)), jnp.float32)
  plain = shared_experts(params, x, 'gelu')
  # w_s = 0: sigmoid(0) = 1/2 for every token.
  half = shared_experts({**params, 'shared_gate': jnp.zeros((d, 1))}, x, 'gelu')
  np.testing.assert_allclose(half, plain / 2, rtol=1e-6)
  w = jnp.asarray(rng.normal(size=(d, 1)), jnp.float32)
  gated = shared_experts({**params, 'shared_gate': w}, x, 'gelu')
  np.testing.assert_allclose(gated, plain * jax.nn.sigmoid(x @ w), rtol=1e-5)


def test_moe_layer_creates_and_uses_the_shared_gate():
  moe = MoEConfig(num_experts=4, d_ff=8, num_shared_experts=1,
                  shared_expert_gate=True, router='topk', top_k=2,
                  dispatcher='dropless')
  params = {'router_kernel': jnp.zeros((4, 4)), 'wi': jnp.zeros((4, 4, 8)),
            'wo': jnp.zeros((4, 8, 4)), 'shared_wi': jnp.ones((4, 8)) * .1,
            'shared_wo': jnp.ones((8, 4)) * .1, 'shared_gate': jnp.zeros((4, 1))}
  x = jnp.ones((1, 2, 4))
  y, _ = jax.jit(functools.partial(moe_apply, config=moe))(params, x)
  # Routed experts are zero; shared: 0.5 · (8 · 0.1 · gelu(0.4)).
  np.testing.assert_allclose(y, 0.5 * 0.8 * jax.nn.gelu(0.4) * jnp.ones_like(x),
                             rtol=1e-5)


@pytest.mark.parametrize('field,named', [
    ({'num_kv_heads': 3}, 'model.num_kv_heads=3'),
    ({'num_kv_heads': 0}, 'model.num_kv_heads=0'),
    ({'norm_eps': 0.0}, 'model.norm_eps=0.0'),
    ({'rope_theta': -1.0}, 'model.rope_theta=-1.0'),
    ({'first_dense_layers': 3}, 'model.first_dense_layers=3'),
    ({'tie_embeddings': 1}, 'model.tie_embeddings=1'),
    ({'sliding_window': 0}, 'model.sliding_window=0'),
])
def test_bad_model_fields_name_the_field(field, named):
  with pytest.raises(UserInputError, match=named.replace('.', r'\.')) as e:
    ModelConfig(**_SMALL, **field)
  assert '\n' not in str(e.value)


def test_bad_moe_fields_name_the_field():
  with pytest.raises(UserInputError, match='shared_expert_gate=True'):
    MoEConfig(shared_expert_gate=True)
  with pytest.raises(UserInputError,
                     match="router_options.topk.renormalize=False needs"):
    MoEConfig(router_options={'topk': {'renormalize': False}})


def test_byte_data_refuses_a_vocabulary_below_256():
  from moe_jax.config import default_config, validate  # pylint: disable=g-import-not-at-top
  config = default_config.get_default_config()
  config.model.vocab_size = 100
  with pytest.raises(UserInputError, match=r'model\.vocab_size=100 is smaller'):
    validate.check_data_config(config)
  config.model.vocab_size = 32000  # A tokenizer's size holds bytes too.
  validate.check_data_config(config)
  # Token ids are checked against V once loaded, so V may be small: nanoGPT's
  # shakespeare_char has V = 65 (this used to be refused as bytes).
  config.model.vocab_size = 65
  config.data.kind, config.data.path = 'tokens', 'train.bin'
  validate.check_data_config(config)


def test_bin_with_a_vocabulary_beyond_uint16_needs_uint32():
  from moe_jax.config import default_config, validate  # pylint: disable=g-import-not-at-top
  config = default_config.get_default_config()
  config.model.vocab_size = 128_256  # Llama 3's.
  config.data.kind, config.data.path = 'tokens', 'llama3.bin'
  with pytest.raises(UserInputError, match=r"token_dtype='uint16' \.bin file "
                     'cannot hold; set --config.data.token_dtype=uint32'):
    validate.check_data_config(config)
  config.data.token_dtype = 'uint32'
  validate.check_data_config(config)
  config.data.token_dtype, config.data.path = 'uint16', 'llama3.npy'
  validate.check_data_config(config)  # Its header gives the dtype.
