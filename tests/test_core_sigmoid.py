"""Sigmoid gating, loss-free balancing bias and balance-loss scopes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core import losses
from moe_jax.core.routing import sigmoid as sigmoid_router
from moe_jax.core.config import MoEConfig
from moe_jax.errors import UserInputError

_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _logit(s):
  s = np.asarray(s, np.float32)
  return np.log(s / (1 - s))[None]  # sigmoid(logit) = s exactly (≈1e-7).


def test_sigmoid_top2_renormalises_and_bias_only_selects():
  s = [[0.9, 0.6, 0.3, 0.2],
       [0.1, 0.2, 0.8, 0.4]]
  route = _jit(functools.partial(sigmoid_router.sigmoid_top_k, capacity=None,
                                 k=2))
  plan, aux = route(_logit(s))
  np.testing.assert_array_equal(plan.expert_index[0], [[0, 1], [2, 3]])
  np.testing.assert_allclose(plan.combine_weights[0],
                             [[0.6, 0.4], [2 / 3, 1 / 3]], atol=1e-6)
  np.testing.assert_array_equal(aux['expert_load'], [1, 1, 1, 1])
  # A bias of +0.5 on e3 makes it t0's second (0.2 + 0.5 > 0.6) and t1's first;
  # the gates use the unbiased scores: t0 -> e0, e3 with 0.9/1.1, 0.2/1.1.
  plan, aux = route(_logit(s), bias=jnp.array([0, 0, 0, 0.5]))
  np.testing.assert_array_equal(plan.expert_index[0], [[0, 3], [3, 2]])
  np.testing.assert_allclose(plan.combine_weights[0],
                             [[0.9 / 1.1, 0.2 / 1.1], [0.4 / 1.2, 0.8 / 1.2]],
                             atol=1e-6)
  np.testing.assert_array_equal(aux['expert_load'], [1, 0, 1, 2])


def test_sigmoid_gates_gradient_and_no_bias_gradient():
  logits = jnp.asarray(np.random.default_rng(0).permutation(12).reshape(
      1, 3, 4) * 0.4 - 2, jnp.float32)
  bias = jnp.array([0.0, 0.1, -0.1, 0.05])
  r = jnp.asarray(np.random.default_rng(1).normal(size=(1, 3, 2)), jnp.float32)

  def f(lg, b):
    plan, _ = sigmoid_router.sigmoid_top_k(lg, capacity=None, k=2, bias=b)
    return jnp.sum(plan.combine_weights * r)

  check_grads(jax.jit(lambda lg: f(lg, bias)), (logits,), order=1,
              modes=['rev'], eps=1e-3)
  assert not np.any(jax.grad(f, argnums=1)(logits, bias))


def test_update_bias_is_plus_minus_gamma():
  b = sigmoid_router.update_bias(jnp.zeros(4), jnp.array([5., 1., 3., 3.]),
                                 1e-3)
  np.testing.assert_array_equal(b, np.float32([-1e-3, 1e-3, 0, 0]))


def test_bias_moves_a_skewed_router_toward_uniform():
  # A router that sends most tokens to e0 and e1; the bias alone (no loss,
  # no learning) must bring MaxVio down within a bounded number of steps.
  rng = np.random.default_rng(0)
  e, k, gamma = 8, 2, 0.01
  logits = jnp.asarray(rng.normal(size=(16, 32, e)) +
                       np.array([2.0, 1.5] + [0.0] * (e - 2)), jnp.float32)

  @jax.jit
  def run(logits):
    def step(bias, _):
      _, aux = sigmoid_router.sigmoid_top_k(logits, capacity=None, k=k,
                                            bias=bias)
      return (sigmoid_router.update_bias(bias, aux['expert_load'], gamma),
              aux['max_violation'])
    return jax.lax.scan(step, jnp.zeros(e), None, length=300)

  bias, maxvio = run(logits)
  maxvio = np.asarray(maxvio)
  assert maxvio[0] > 1.0  # e0 takes more than twice its share at first.
  assert maxvio[-50:].max() < 0.2, maxvio[-50:]
  assert bias[0] < 0 and bias[1] < 0  # The favourites were pushed down.


# ------------------------------------------------------- balance scopes --


def _switch_loss(probs, index, e):
  f = np.mean(np.eye(e)[index.reshape(-1)], axis=0)
  return e * np.sum(f * probs.reshape(-1, e).mean(0))


def test_balance_scopes_follow_their_formulas():
  rng = np.random.default_rng(0)
  g, s, e = 4, 6, 3
  probs = rng.dirichlet(np.ones(e), size=(g, s)).astype(np.float32)
  index = rng.integers(0, e, size=(g, s, 1))
  want = {
      'global': _switch_loss(probs, index, e),
      'sequence': np.mean([_switch_loss(probs[i], index[i], e)
                           for i in range(g)]),
      'micro_batch': np.mean([_switch_loss(probs[i:i + 2], index[i:i + 2], e)
                              for i in (0, 2)]),
  }
  got = {scope: float(losses.scoped_load_balance_loss(
      probs, index, scope=scope, num_shards=2)) for scope in want}
  np.testing.assert_allclose([got[k] for k in want], list(want.values()),
                             rtol=1e-5)
  assert len({round(v, 6) for v in got.values()}) == 3  # They differ.
  # Without a mesh, one shard: micro-batch is the global pool.
  np.testing.assert_allclose(
      losses.scoped_load_balance_loss(probs, index, scope='micro_batch'),
      want['global'], rtol=1e-6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(balance_loss_scope='batch'), 'balance_loss_scope'),
    (dict(router='switch',
          router_options={'sigmoid': {'bias_update_rate': 1e-3}}),
     "router='sigmoid'"),
    (dict(router='sigmoid', top_k=2,
          router_options={'sigmoid': {'bias_update_rate': -1.0}}),
     'bias_update_rate'),
])
def test_bad_sigmoid_config_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    MoEConfig(**kwargs)
  assert '\n' not in str(e.value)
