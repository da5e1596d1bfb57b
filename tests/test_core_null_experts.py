"""Null experts (AdaMoE, MoE++): hand case, float64 reference on every
dispatcher, no compute for null choices, gradients, causality, header, config
errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.core.routing import topk
from moe_jax.errors import UserInputError
from testlib import moe_params, positions_changed_by_later_tokens

_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})

# E = 2 real experts (0, 1) and N = 2 null ones (2, 3), top-2:
# t0 -> e0 + null; t1 -> two nulls; t2 -> e1, e0.
LOGITS = np.array([[[2.0, 0.0, 1.0, -1.0],
                    [-1.0, 0.0, 3.0, 2.0],
                    [1.0, 2.0, 0.0, -5.0]]], np.float32)


@pytest.mark.parametrize('renormalize', [True, False])
def test_hand_case(renormalize):
  route = _jit(functools.partial(topk.top_k, k=2, num_null=2,
                                 renormalize=renormalize))
  plan, aux = route(LOGITS, capacity=None)
  np.testing.assert_array_equal(plan.expert_index[0], [[0, 2], [2, 3], [1, 0]])
  assert plan.num_experts == 2
  # Null choices are not sent; the rest are, slot = rank in its expert.
  np.testing.assert_array_equal(plan.slot[0], [[0, -1], [-1, -1], [0, 1]])
  p = np.exp(LOGITS[0]) / np.exp(LOGITS[0]).sum(-1, keepdims=True)
  if renormalize:  # AdaMoE: over the real choices only.
    want = [[1, 0], [0, 0], [p[2, 1] / (p[2, 1] + p[2, 0]),
                             p[2, 0] / (p[2, 1] + p[2, 0])]]
  else:
    want = [[p[0, 0], 0], [0, 0], [p[2, 1], p[2, 0]]]
  np.testing.assert_allclose(plan.combine_weights[0], want, rtol=1e-6)
  np.testing.assert_allclose(aux['null_fraction'], 0.5)
  np.testing.assert_allclose(aux['experts_per_token'], [1 / 3] * 3, rtol=1e-6)
  np.testing.assert_allclose(aux['experts_per_token_mean'], 1.0)
  np.testing.assert_allclose(aux['expert_fraction'], [2 / 3, 1 / 3],
                             rtol=1e-6)
  np.testing.assert_allclose(aux['unrouted_fraction'], 1 / 3, rtol=1e-6)
  # The balance loss spans all four outputs (AdaMoE): f over E + N.
  f = np.bincount([0, 2, 2, 3, 1, 0], minlength=4) / 6
  np.testing.assert_allclose(aux['load_balance_loss'],
                             4 * np.sum(f * p.mean(0)), rtol=1e-6)


def test_null_choices_take_no_slot_and_no_row():
  plan, _ = topk.top_k(jnp.asarray(LOGITS), k=2, num_null=2, capacity=1)
  # Only the 3 real choices can hold slots; e0's second one is over C = 1.
  np.testing.assert_array_equal(plan.slot[0], [[0, -1], [-1, -1], [0, -1]])
  dropless, _ = topk.top_k(jnp.asarray(LOGITS), k=2, num_null=2,
                           capacity=None)
  _, sizes = dropless.expert_sort_key()
  np.testing.assert_array_equal(sizes, [2, 1])  # 3 rows of 6 choices.
  # The dropless experts receive 3 rows, not 6: the rest is padding they skip.
  from moe_jax.core.dispatch import DISPATCHERS  # pylint: disable=g-import-not-at-top
  inputs, _ = DISPATCHERS['dropless_ragged'].dispatch(
      jnp.ones((1, 3, 2)), dropless)
  assert int(jnp.sum(inputs.group_sizes)) == 3


def _np_gelu(h):
  return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))


def _reference(params, x, e, k):
  """float64 AdaMoE top-k: softmax over E + N, top k, real gates
  renormalised over the real choices, nulls add nothing."""
  p = {n: np.asarray(v, np.float64) for n, v in params.items()}
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  logits = x @ p['router_kernel']
  probs = np.exp(logits - logits.max(1, keepdims=True))
  probs /= probs.sum(1, keepdims=True)
  out = np.zeros_like(x)
  for t in range(x.shape[0]):
    chosen = [c for c in np.argsort(-probs[t], kind='stable')[:k] if c < e]
    total = sum(probs[t, c] for c in chosen)
    for c in chosen:
      out[t] += probs[t, c] / total * (_np_gelu(x[t] @ p['wi'][c]) @ p['wo'][c])
  return out


@pytest.mark.parametrize('dispatcher', ['index', 'einsum', 'fused', 'dropless',
                                        'dropless_fused', 'dropless_ragged'])
def test_every_dispatcher_matches_the_float64_reference(dispatcher):
  e, n, d, f, k = 4, 4, 6, 8, 3
  config = MoEConfig(router='topk', top_k=k, num_experts=e, d_ff=f,
                     num_null_experts=n, dispatcher=dispatcher,
                     fixed_capacity=5)  # = S: nothing dropped.
  params = moe_params(0, d, f, e)
  params['router_kernel'] = jnp.asarray(
      np.random.default_rng(5).normal(size=(d, e + n)), jnp.float32)
  x = np.random.default_rng(1).normal(size=(2, 5, d)).astype(np.float32)
  y, aux = _jit(lambda p, x: moe_apply(p, x, config))(params, x)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, d),
                             _reference(params, x, e, k), rtol=2e-5,
                             atol=2e-6)
  hist = np.asarray(aux['experts_per_token'])
  assert hist.shape == (k + 1,) and np.count_nonzero(hist) > 1


def test_gradients_match_finite_differences():
  e, n, d, f = 4, 2, 5, 6
  config = MoEConfig(router='topk', top_k=2, num_experts=e, d_ff=f,
                     num_null_experts=n, dispatcher='index',
                     capacity_factor=1.0, min_capacity=1)
  params = moe_params(2, d, f, e)
  params['router_kernel'] = jnp.asarray(
      np.random.default_rng(6).normal(size=(d, e + n)), jnp.float32)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, d)),
                  jnp.float32)
  r = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, d)),
                  jnp.float32)

  def loss(kernel, wi, x):
    y, aux = moe_apply(dict(params, router_kernel=kernel, wi=wi), x, config,
                       train=True)
    return jnp.sum(y * r) + aux['aux_loss']

  check_grads(jax.jit(loss), (params['router_kernel'], params['wi'], x),
              order=1, modes=['rev'], eps=1e-3, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize('router,k,dispatcher', [('switch', 1, 'index'),
                                                 ('topk', 2, 'dropless')])
def test_later_tokens_never_change_earlier_outputs(router, k, dispatcher):
  """Top-1 with drops (drops go in position order) and top-k without drops
  are lookahead-free with null experts too, as without."""
  b, length, d, e, n = 2, 12, 6, 4, 4
  config = MoEConfig(router=router, top_k=k, num_experts=e, d_ff=8,
                     num_null_experts=n, dispatcher=dispatcher,
                     capacity_factor=1.0, min_capacity=1)
  params = moe_params(0, d, 8, e)
  params['router_kernel'] = jnp.asarray(
      np.random.default_rng(7).normal(size=(d, e + n)), jnp.float32)
  fn = _jit(lambda x: moe_apply(params, x, config))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, length, d)).astype(np.float32)
  y, aux = fn(x)
  assert 0 < float(aux['null_fraction']) < 1
  if dispatcher == 'index':
    assert float(aux['dropped_fraction'][0]) > 0  # The check covers drops.
  assert positions_changed_by_later_tokens(lambda x: fn(x)[0], x, rng) == []


def test_router_width_capacity_and_header_count():
  config = MoEConfig(router='topk', top_k=4, num_experts=8,
                     num_null_experts=8, capacity_factor=1.0)
  assert config.num_router_outputs == 16
  # At balance each of the 16 outputs gets K·S/16 choices.
  assert config.capacity(64, train=True) == 16
  # The header assumes that balanced share of real choices: 4·8/16.
  assert config.expert_passes_per_token(64) == 2.0


@pytest.mark.parametrize('kwargs,match', [
    (dict(router='sigmoid', top_k=2, num_null_experts=2),
     'null experts with a router that cannot use them|cannot use them'),
    (dict(router='relu', top_k=2, num_null_experts=2), 'cannot use them'),
    (dict(router='topk', top_k=2, num_null_experts=-1), 'num_null_experts'),
    (dict(router='topk', top_k=13, num_experts=8, num_null_experts=4),
     'num_null_experts=4'),
])
def test_bad_null_expert_config_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    MoEConfig(**kwargs)
  assert '\n' not in str(e.value)
