"""Uniform (forced-balanced) routing: exact loads, constant gates, causal."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.core.routing import uniform
from testlib import moe_params


def test_experts_by_hand():
  # S = 4, K = 2, E = 4: choices 0..7 walk round the experts twice.
  np.testing.assert_array_equal(uniform.uniform_experts(4, 2, 4),
                                [[0, 1], [2, 3], [0, 1], [2, 3]])
  # K = 3, E = 4, S = 4: 12 choices, 3 per expert, distinct within a token.
  np.testing.assert_array_equal(uniform.uniform_experts(4, 3, 4),
                                [[0, 1, 2], [3, 0, 1], [2, 3, 0], [1, 2, 3]])


@pytest.mark.parametrize('g,s,e,k', [(2, 16, 8, 1), (3, 12, 6, 2),
                                     (1, 10, 5, 5), (2, 8, 4, 3)])
def test_every_expert_gets_exactly_s_k_over_e_whatever_the_logits(g, s, e, k):
  rng = np.random.default_rng(0)
  # A router collapsed onto expert 0 changes nothing.
  logits = jnp.asarray(rng.normal(size=(g, s, e)) + 50 * np.eye(e)[0],
                       jnp.float32)
  plan, aux = jax.jit(lambda lg: uniform.uniform_route(
      lg, capacity=s * k // e, k=k))(logits)
  index = np.asarray(plan.expert_index)
  for group in index:
    np.testing.assert_array_equal(np.bincount(group.ravel(), minlength=e),
                                  [s * k // e] * e)
    assert all(len(set(row)) == k for row in group)  # Distinct experts.
  # At capacity exactly S·K/E nothing is dropped; every gate is 1/K.
  np.testing.assert_allclose(plan.combine_weights, 1.0 / k)
  assert float(aux['max_violation']) == 0.0
  np.testing.assert_allclose(aux['load_balance_loss'], 1.0, rtol=1e-6)
  np.testing.assert_array_equal(aux['dropped_fraction'], np.zeros(k))


def test_layer_equals_a_numpy_reference():
  # y_t = (1/K)·Σ_j MLP_{(t·K+j) mod E}(x_t), in float64.
  b, l, d, f, e, k = 2, 8, 4, 6, 4, 2
  params = moe_params(0, d, f, e)
  x = np.random.default_rng(1).normal(size=(b, l, d)).astype(np.float32)
  config = MoEConfig(router='uniform', top_k=k, num_experts=e, d_ff=f,
                     capacity_factor=1.0, min_capacity=1)
  y, _ = moe_apply(params, jnp.asarray(x), config)
  wi, wo = (np.asarray(params[n], np.float64) for n in ('wi', 'wo'))
  gelu = lambda h: np.asarray(jax.nn.gelu(jnp.asarray(h)), np.float64)
  want = np.zeros((b, l, d))
  for i in range(b):
    for t in range(l):
      for j in range(k):
        ex = (t * k + j) % e
        want[i, t] += gelu(x[i, t] @ wi[ex]) @ wo[ex] / k
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-5)


def test_gradients_reach_the_experts_and_only_the_z_loss_reaches_the_router():
  d, f, e = 4, 6, 4
  params = moe_params(2, d, f, e)
  x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 8, d)),
                  jnp.float32)
  config = MoEConfig(router='uniform', top_k=2, num_experts=e, d_ff=f,
                     load_balance_weight=0.0, z_loss_weight=0.0)

  def loss(wi, kernel):
    y, aux = moe_apply({**params, 'wi': wi, 'router_kernel': kernel}, x,
                       config)
    return jnp.sum(y ** 2) + aux['aux_loss']

  check_grads(lambda wi: loss(wi, params['router_kernel']), (params['wi'],),
              order=1, modes=['rev'], eps=1e-3)
  assert not np.any(jax.grad(loss, argnums=1)(params['wi'],
                                              params['router_kernel']))


def test_causal_later_tokens_leave_earlier_outputs_bit_identical():
  # Even with drops (cf 0.5): which choices drop depends on positions only.
  d, f, e = 4, 6, 4
  params = moe_params(4, d, f, e)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(2, 16, d)).astype(np.float32)
  later = x.copy()
  later[:, 9:] = rng.normal(size=(2, 7, d)) * 5
  for cf in (1.0, 0.5):
    config = MoEConfig(router='uniform', top_k=2, num_experts=e, d_ff=f,
                       capacity_factor=cf, min_capacity=1)
    run = jax.jit(lambda v, config=config: moe_apply(params, v, config,
                                                     train=True)[0])
    a, b = np.asarray(run(x)), np.asarray(run(later))
    assert a[:, :9].tobytes() == b[:, :9].tobytes(), cf
    # (At cf 0.5 tokens 8.. lose every choice: first choices fill experts
    # 0 and 2 by token 7, so only cf 1 shows the later tokens changed.)
    assert np.any(a[:, 9:] != b[:, 9:]) or cf < 1
  assert not MoEConfig(router='uniform').spec.group_wide

