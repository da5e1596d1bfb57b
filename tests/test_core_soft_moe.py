"""Soft MoE: a hand-computed case, a loop reference, causality, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from moe_jax.core.config import MoEConfig
from moe_jax.core.experts import gelu_mlp
from moe_jax.core.moe import moe_apply
from moe_jax.core.routing.soft import soft_moe
from moe_jax.errors import UserInputError
from moe_jax.layers.moe import MoELayer
from moe_jax.models.config import ModelConfig
from testlib import moe_params


def _scale_expert(params, inputs):
  """Expert e multiplies its rows by params['s'][e]: easy to follow by hand."""
  return inputs.x * params['s'][:, None, None]


def test_hand_computed_two_tokens_one_slot_each():
  # S = 2 tokens, D = 1, E = 2 experts with P = 1 slot each.
  # logits = [[0, ln 3], [ln 3, 0]]:
  #   dispatch (softmax over tokens, per slot): slot 0 = (1/4, 3/4),
  #     slot 1 = (3/4, 1/4); with x = (1, 5): slot 0 = 4, slot 1 = 2.
  #   experts scale by (2, 10): slot outputs 8 and 20.
  #   combine (softmax over slots, per token): token 0 = (1/4, 3/4) -> 17,
  #     token 1 = (3/4, 1/4) -> 11.
  x = jnp.array([[[1.0], [5.0]]])
  ln3 = np.log(3.0)
  logits = jnp.array([[[0.0, ln3], [ln3, 0.0]]], jnp.float32)
  y, aux = soft_moe(x, logits, {'s': jnp.array([2.0, 10.0])}, _scale_expert,
                    num_experts=2)
  np.testing.assert_allclose(y[0, :, 0], [17.0, 11.0], rtol=1e-6)
  np.testing.assert_allclose(aux['expert_fraction'], [0.5, 0.5])
  assert float(aux['max_violation']) == 0.0
  # Each slot mixes (1/4, 3/4): exp(H) / 2 with H the entropy in nats.
  h = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
  np.testing.assert_allclose(aux['dispatch_entropy'], np.exp(h) / 2, rtol=1e-6)


def _loop_reference(x, logits, params, num_experts, chunk=None):
  """Soft MoE written slot by slot and token by token, in float64 numpy."""
  x, logits = np.asarray(x, np.float64), np.asarray(logits, np.float64)
  g, s, d = x.shape
  n = logits.shape[-1]
  p = n // num_experts
  q = chunk or s
  wi, wo = np.asarray(params['wi'], np.float64), np.asarray(params['wo'],
                                                           np.float64)
  gelu = lambda h: np.asarray(jax.nn.gelu(h.astype(np.float32)), np.float64)
  y = np.zeros_like(x)
  for gi in range(g):
    outs = []  # Per chunk: [N, D] slot outputs.
    for c in range(s // q):
      xs, lg = x[gi, c * q:(c + 1) * q], logits[gi, c * q:(c + 1) * q]
      out = np.zeros((n, d))
      for j in range(n):
        w = np.exp(lg[:, j] - lg[:, j].max())
        slot = (w / w.sum()) @ xs
        e = j // p
        out[j] = gelu(slot @ wi[e]) @ wo[e]
      outs.append(out)
    for t in range(s):
      c = t // q
      source = c - 1 if chunk else c
      if source < 0:
        continue
      w = np.exp(logits[gi, t] - logits[gi, t].max())
      y[gi, t] = (w / w.sum()) @ outs[source]
  return y


def _random_case(seed, g=2, s=8, d=4, e=2, p=2, f=3):
  k = jax.random.split(jax.random.key(seed), 4)
  x = jax.random.normal(k[0], (g, s, d))
  logits = jax.random.normal(k[1], (g, s, e * p))
  params = {'wi': jax.random.normal(k[2], (e, d, f)) * 0.5,
            'wo': jax.random.normal(k[3], (e, f, d)) * 0.5}
  return x, logits, params


def test_matches_loop_reference_both_modes():
  x, logits, params = _random_case(0)
  y, _ = soft_moe(x, logits, params, gelu_mlp, num_experts=2)
  np.testing.assert_allclose(y, _loop_reference(x, logits, params, 2),
                             rtol=1e-5, atol=1e-5)
  y, _ = soft_moe(x, logits, params, gelu_mlp, num_experts=2, causal=True,
                  chunk=4)
  np.testing.assert_allclose(y, _loop_reference(x, logits, params, 2, chunk=4),
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(y[:, :4], 0.0)  # Chunk 0 reads no slots.


def _moved_later_token(causal):
  """Changes token 5 of 8 (and its logits); which outputs before it move?"""
  x, logits, params = _random_case(1)
  fn = functools.partial(soft_moe, expert_params=params, expert_fn=gelu_mlp,
                         num_experts=2, causal=causal, chunk=2)
  y0, _ = fn(x, logits)
  y1, _ = fn(x.at[:, 5].add(3.0), logits.at[:, 5].add(2.0))
  return np.abs(np.asarray(y1 - y0))[:, :5].max(axis=(0, 2))


def test_causal_mode_never_reads_later_tokens():
  np.testing.assert_array_equal(_moved_later_token(causal=True), 0.0)
  # The paper's form mixes the whole group, so earlier outputs move: the
  # test above can fail.
  assert _moved_later_token(causal=False).min() > 1e-4


def test_gradients():
  x, logits, params = _random_case(2, g=1, s=4, d=3, p=1, f=2)
  for causal in (False, True):
    fn = lambda x, lg, wi, wo: soft_moe(
        x, lg, {'wi': wi, 'wo': wo}, gelu_mlp, num_experts=2,
        causal=causal, chunk=2)[0]
    # jit: check_grads calls fn many times, and eager dispatch dominated.
    check_grads(jax.jit(fn), (x, logits, params['wi'], params['wo']),
                order=1, modes=('rev',), atol=1e-2, rtol=1e-2)


def _soft_config(**kw):
  base = dict(num_experts=2, d_ff=3, router='soft', causal_chunk=4,
              router_options={'soft': {'slots_per_expert': 2}})
  return MoEConfig(**{**base, **kw})


def test_moe_apply_soft_path_matches_the_core_function():
  config = _soft_config()
  params = moe_params(3, d=4, f=3, e=2)
  params['router_kernel'] = jax.random.normal(jax.random.key(4), (4, 4))
  x = jax.random.normal(jax.random.key(5), (2, 8, 4))
  y, aux = moe_apply(params, x, config)
  logits = x @ params['router_kernel']
  expected, _ = soft_moe(x, logits, {k: params[k] for k in ('wi', 'wo')},
                         gelu_mlp, num_experts=2, causal=True, chunk=4)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)
  assert float(aux['aux_loss']) == 0.0  # No balance loss: nothing to balance.


def test_layer_holds_e_times_p_slot_logits():
  layer = MoELayer(_soft_config(), d_model=4, rngs=nnx.Rngs(0))
  assert layer.router_kernel.shape == (4, 4)
  y, _ = layer(jnp.ones((1, 8, 4)))
  assert y.shape == (1, 8, 4)


@pytest.mark.parametrize('kwargs,match', [
    (dict(router='switch'), "needs router='soft'"),
    (dict(router_options={'soft': {'slots_per_expert': 0}}),
     'slots_per_expert=0 must be a positive int'),
    (dict(group_size=8), 'unset group_size'),
])
def test_bad_soft_config_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    _soft_config(**kwargs)
  assert '\n' not in str(e.value)


def test_decoder_refuses_noncausal_soft_unless_allowed():
  moe = _soft_config(causal_routing=False)
  with pytest.raises(UserInputError, match='allow_noncausal=True'):
    ModelConfig(d_model=4, num_heads=1, d_ff=3, max_len=8, moe=moe)
  ModelConfig(d_model=4, num_heads=1, d_ff=3, max_len=8,
              moe=_soft_config(causal_routing=False, allow_noncausal=True))


def test_expert_passes_per_token_count_slots_not_top_k():
  # Soft MoE runs each of its E·P slots once per chunk (group): E·P/S.
  p4 = {'soft': {'slots_per_expert': 4}}
  soft = MoEConfig(router='soft', num_experts=8, router_options=p4,
                   causal_chunk=16)
  assert soft.expert_passes_per_token(128) == 2.0  # Causal: per chunk.
  noncausal = MoEConfig(router='soft', num_experts=8, router_options=p4,
                        causal_routing=False, allow_noncausal=True)
  assert noncausal.expert_passes_per_token(32) == 1.0
  # Expert choice: E·C/S, C = ceil(16·1.25/8) = 3 per 16-position chunk.
  ec = MoEConfig(router='expert_choice', num_experts=8, capacity_factor=1.25,
                 causal_chunk=16, min_capacity=1)
  assert ec.expert_passes_per_token(128) == 8 * 3 / 16
  assert MoEConfig(router='topk', top_k=3).expert_passes_per_token(128) == 3
