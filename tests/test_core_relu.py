"""ReLU routing (ReMoE): hand case, float64 reference, every dispatcher,
gradients, causality, the λ rule and its config errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.core.routing import relu
from moe_jax.errors import UserInputError
from testlib import moe_params, positions_changed_by_later_tokens

_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})

# One group, 3 tokens, E = 4: t0 -> e0, e2, e3; t1 -> none; t2 -> e0, e1.
LOGITS = np.array([[[1.0, -1.0, 0.5, 2.0],
                    [-1.0, -2.0, -0.5, -3.0],
                    [0.25, 0.75, -1.0, -1.0]]], np.float32)


def test_hand_case_with_capacity_one():
  plan, aux = _jit(functools.partial(relu.relu_route, capacity=1,
                                     target_k=2))(LOGITS, l1_weight=0.5)
  # Column e is expert e; e0 is full after t0, so t2's e0 is dropped.
  np.testing.assert_array_equal(plan.expert_index[0], [[0, 1, 2, 3]] * 3)
  np.testing.assert_array_equal(plan.slot[0], [[0, -1, 0, 0],
                                               [-1, -1, -1, -1],
                                               [-1, 0, -1, -1]])
  np.testing.assert_allclose(plan.combine_weights[0], [[1, 0, 0.5, 2],
                                                       [0, 0, 0, 0],
                                                       [0, 0.75, 0, 0]])
  np.testing.assert_allclose(aux['experts_per_token'], [1 / 3, 0, 1 / 3,
                                                        1 / 3, 0], atol=1e-7)
  np.testing.assert_allclose(aux['experts_per_token_mean'], 5 / 3, rtol=1e-6)
  assert float(aux['experts_per_token_target']) == 2
  # f = 4·n/(2·3) with n = [2, 1, 1, 1]; P = mean gates
  # = [1.25/3, 0.75/3, 0.5/3, 2/3]: Σ f·P = 10/18 + 3/18 + 2/18 + 8/18.
  np.testing.assert_allclose(aux['l1_loss'], 23 / 18, rtol=1e-6)
  np.testing.assert_allclose(aux['router_loss'], 0.5 * 23 / 18, rtol=1e-6)
  np.testing.assert_allclose(aux['dropped_fraction'], [1 / 5], rtol=1e-6)
  np.testing.assert_allclose(aux['unrouted_fraction'], 1 / 3, rtol=1e-6)
  np.testing.assert_allclose(aux['expert_fraction'], [0.4, 0.2, 0.2, 0.2],
                             rtol=1e-6)


def _np_gelu(h):
  return 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))


def _reference(params, x, l1_weight, k, alpha, beta):
  """float64: y_t = Σ_e ReLU(l_te)·MLP_e(x_t) and the weighted aux loss."""
  p = {n: np.asarray(v, np.float64) for n, v in params.items()}
  x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
  logits = x @ p['router_kernel']
  gates = np.maximum(logits, 0)
  out = np.einsum('te,ted->td', gates, np.stack([
      _np_gelu(x @ p['wi'][e]) @ p['wo'][e] for e in range(gates.shape[1])],
                                                 axis=1))
  e, t = gates.shape[1], gates.shape[0]
  n = (gates > 0).sum(0)
  l1 = np.sum(e * n / (k * t) * gates.mean(0))
  norm = gates / np.where(gates.sum(1, keepdims=True) > 0,
                          gates.sum(1, keepdims=True), 1)
  balance = e * np.sum(n / n.sum() * norm.mean(0))
  lse = np.log(np.exp(logits).sum(1))
  aux = alpha * balance + beta * np.mean(lse**2) + l1_weight * l1
  return out, aux


@pytest.mark.parametrize('dispatcher', ['index', 'einsum', 'fused', 'dropless',
                                        'dropless_fused', 'dropless_ragged'])
def test_every_dispatcher_matches_the_float64_reference(dispatcher):
  e, d, f, k = 4, 6, 8, 2
  # Capacity = S: nothing can be dropped, so capacity and dropless agree.
  config = MoEConfig(router='relu', top_k=k, num_experts=e, d_ff=f,
                     dispatcher=dispatcher, fixed_capacity=5,
                     load_balance_weight=0.1, z_loss_weight=0.01)
  params = moe_params(0, d, f, e)
  params['relu_l1_weight'] = jnp.full((1,), 0.3, jnp.float32)
  x = np.random.default_rng(1).normal(size=(2, 5, d)).astype(np.float32)
  y, aux = _jit(lambda p, x: moe_apply(p, x, config, train=True))(params, x)
  want_y, want_aux = _reference(params, x, 0.3, k, 0.1, 0.01)
  np.testing.assert_allclose(np.asarray(y).reshape(-1, d), want_y,
                             rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(aux['aux_loss'], want_aux, rtol=2e-5)
  # The tokens do use a varying number of experts here.
  assert np.count_nonzero(np.asarray(aux['experts_per_token'])) > 1


@pytest.mark.parametrize('dispatcher', ['index', 'dropless'])
def test_gradients_match_finite_differences(dispatcher):
  e, d, f = 4, 5, 6
  config = MoEConfig(router='relu', top_k=2, num_experts=e, d_ff=f,
                     dispatcher=dispatcher, capacity_factor=1.0,
                     min_capacity=1)
  params = moe_params(2, d, f, e)
  params['relu_l1_weight'] = jnp.full((1,), 0.2, jnp.float32)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 4, d)),
                  jnp.float32)
  r = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, d)),
                  jnp.float32)

  def loss(kernel, wi, x):
    p = dict(params, router_kernel=kernel, wi=wi)
    y, aux = moe_apply(p, x, config, train=True)
    return jnp.sum(y * r) + aux['aux_loss']

  check_grads(jax.jit(loss), (params['router_kernel'], params['wi'], x),
              order=1, modes=['rev'], eps=1e-3, atol=2e-2, rtol=2e-2)
  # λ is state: no gradient reaches it.
  g = jax.jit(jax.grad(lambda lam: moe_apply(
      dict(params, relu_l1_weight=lam), x, config, train=True)[1][
          'aux_loss']))(params['relu_l1_weight'])
  assert not np.any(np.asarray(g))


def test_later_tokens_never_change_earlier_outputs_even_with_drops():
  b, length, d, e = 2, 12, 6, 4
  config = MoEConfig(router='relu', top_k=1, num_experts=e, d_ff=8,
                     capacity_factor=1.0, min_capacity=1)
  params = moe_params(0, d, 8, e)
  params['relu_l1_weight'] = jnp.full((1,), 1e-3, jnp.float32)
  fn = _jit(lambda x: moe_apply(params, x, config, train=True))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(b, length, d)).astype(np.float32)
  y, aux = fn(x)
  assert float(aux['dropped_fraction'][0]) > 0  # The check covers drops.
  assert positions_changed_by_later_tokens(lambda x: fn(x)[0], x, rng) == []


def test_l1_weight_moves_by_alpha_toward_the_target():
  lam = jnp.full((1,), 1e-2, jnp.float32)
  up = relu.update_l1_weight(lam, jnp.float32(3.0), jnp.float32(2.0), 1.2)
  down = relu.update_l1_weight(lam, jnp.float32(1.5), jnp.float32(2.0), 1.2)
  stay = relu.update_l1_weight(lam, jnp.float32(2.0), jnp.float32(2.0), 1.2)
  np.testing.assert_allclose(up, [1.2e-2], rtol=1e-6)
  np.testing.assert_allclose(down, [1e-2 / 1.2], rtol=1e-6)
  np.testing.assert_array_equal(stay, lam)
  # Clamped: never 0 (α could not move it again) nor inf.
  tiny = relu.update_l1_weight(jnp.full((1,), 1e-30), jnp.float32(0.0),
                               jnp.float32(2.0), 1.2)
  assert float(tiny[0]) == np.float32(1e-30)


def test_l1_weight_steers_a_layer_to_the_target_k():
  """λ·L1 against a task-like pull toward the gates, with λ moved by the
  rule after each step: a router that starts with ~7 of 8 experts per token
  settles around k = 2."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(1, 256, 8)), jnp.float32)
  like = jnp.asarray(rng.uniform(size=(1, 256, 8)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(8, 8)) * 0.3, jnp.float32)
  bias = jnp.full((8,), 1.0, jnp.float32)
  lam = jnp.full((1,), 1e-3, jnp.float32)

  @jax.jit
  def step(kernel, bias, lam):
    def loss(kb):
      logits = x @ kb[0] + kb[1]
      _, aux = relu.relu_route(logits, capacity=None, target_k=2,
                               l1_weight=lam)
      task = -jnp.mean(jnp.sum(like * jnp.tanh(jax.nn.relu(logits)), -1))
      return aux['router_loss'] + task, aux
    grads, aux = jax.grad(loss, has_aux=True)((kernel, bias))
    lam = relu.update_l1_weight(lam, aux['experts_per_token_mean'],
                                aux['experts_per_token_target'], 1.2)
    return kernel - 0.5 * grads[0], bias - 0.5 * grads[1], lam, aux

  means = []
  for _ in range(400):
    kernel, bias, lam, aux = step(kernel, bias, lam)
    means.append(float(aux['experts_per_token_mean']))
  assert means[0] > 7
  assert abs(np.mean(means[-100:]) - 2) < 0.3, means[-100:]


def test_header_counts_the_target_k():
  config = MoEConfig(router='relu', top_k=2, num_experts=8)
  assert config.expert_passes_per_token(64) == 2
  assert config.has_router_bias  # λ is router state.


@pytest.mark.parametrize('kwargs,match', [
    (dict(router_options={'relu': {'l1_weight_init': 0.0}}),
     'l1_weight_init'),
    (dict(router_options={'relu': {'l1_weight_multiplier': 0.5}}),
     'l1_weight_multiplier'),
    (dict(balance_loss_scope='sequence'), "balance_loss_scope='global'"),
])
def test_bad_relu_config_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    MoEConfig(router='relu', top_k=2, **kwargs)
  assert '\n' not in str(e.value)
