"""Quantile balancing (QB) of the deepseek router's selection bias
(router_options.deepseek.bias_update='quantile'; deepseek.py and
quantile_balance.py). Its bad options are one-line errors:
tests/test_core_quantile_balance.py, for both routers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core.config import MoEConfig
from moe_jax.core.routing import RouterInputs, deepseek
from moe_jax.core.routing import quantile_balance as qb
from moe_jax.core.routing import sigmoid as sigmoid_router

# Small programs: skip XLA's slow passes (as test_core_deepseek.py).
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})
V3 = deepseek.Options(n_group=4, topk_group=2, routed_scaling_factor=2.5,
                      bias_update='quantile')


def _logit(s):
  s = np.asarray(s, np.float64)
  return jnp.asarray(np.log(s / (1 - s)), jnp.float32)


@functools.partial(jax.jit, static_argnames=('k', 'options'))
def _route(logits, bias, k, options):
  return deepseek.deepseek_top_k(logits, capacity=None, k=k, options=options,
                                 bias=bias, solve_quantile=True)


def test_solve_by_hand_and_gates_without_the_bias():
  # quantile_balance.py's hand case (test_core_quantile_balance.py), routed
  # by the deepseek router: every token's best is e0; K = 1, n = 1; α = the
  # second best = (0.5, 0.6, 0.4, 0.5), so b = (−.3, 0, .3, .1).
  s = np.float32([[0.9, 0.5, 0.2, 0.1],
                  [0.8, 0.6, 0.3, 0.1],
                  [0.7, 0.2, 0.4, 0.3],
                  [0.6, 0.1, 0.2, 0.5]])
  options = deepseek.Options(renormalize=False, routed_scaling_factor=2.5,
                             bias_update='quantile')
  _, aux = _route(_logit(s)[None], jnp.zeros(4), 1, options)
  np.testing.assert_allclose(aux['quantile_bias'], [-0.3, 0.0, 0.3, 0.1],
                             atol=1e-6)
  # Routed with it, each expert takes one token (T·K/E = 1), and each gate
  # is 2.5·s of the chosen expert, never s + b.
  plan, aux = _route(_logit(s)[None], aux['quantile_bias'], 1, options)
  np.testing.assert_array_equal(aux['expert_load'], [1, 1, 1, 1])
  np.testing.assert_array_equal(plan.expert_index[0, :, 0], [0, 1, 2, 3])
  np.testing.assert_allclose(plan.combine_weights[0, :, 0],
                             2.5 * np.float32([0.9, 0.6, 0.4, 0.5]),
                             rtol=1e-6)


def test_ungrouped_solve_is_the_sigmoid_routers_bit_for_bit():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 16, 8)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=8) * 0.1, jnp.float32)
  _, ours = _route(logits, bias, 2, deepseek.Options(bias_update='quantile'))
  _, theirs = jax.jit(functools.partial(
      sigmoid_router.sigmoid_top_k, capacity=None, k=2,
      solve_quantile=True))(logits, bias=bias)
  assert (np.asarray(ours['quantile_bias']).tobytes() ==
          np.asarray(theirs['quantile_bias']).tobytes())


def _loads(logits, options, k, steps, eligible=True):
  """Per-expert loads of `steps` routings of one batch, each with the bias
  the previous routing's solve gave (weight 1). eligible=False solves as if
  there were no group limit."""
  bias, loads = jnp.zeros(logits.shape[-1]), []
  for _ in range(steps):
    _, aux = _route(logits, bias, k, options)
    loads.append(np.asarray(aux['expert_load']))
    solved = aux['quantile_bias'] if eligible else qb.solve_bias(
        jax.nn.sigmoid(logits), bias, k)
    bias = qb.update_bias(bias, solved, 1.0)
  return np.array(loads)


@pytest.fixture(scope='module')
def skewed():
  # 512 tokens over E = 8 experts, K = 2, skewed to experts 0 and 1: the
  # target is T·K/E = 128 choices per expert.
  rng = np.random.default_rng(1)
  return jnp.asarray(rng.normal(size=(4, 128, 8)) +
                     np.array([2.0, 1.5] + [0.0] * 6), jnp.float32)


def _worst(loads):
  """Per step, the largest |load − 128| over the experts."""
  return np.abs(loads - 128).max(axis=1)


def test_reaches_the_target_load_without_groups(skewed):
  worst = _worst(_loads(skewed, deepseek.Options(bias_update='quantile'), 2,
                        8))
  # Measured 2026-12-06: 275, 52, 12, 11, 9, 8, 7, 7 choices off.
  assert worst[0] > 250 and worst[1] < 0.5 * 128, worst
  assert worst[4:].max() <= 0.08 * 128, worst


def test_reaches_the_target_load_under_the_group_limit(skewed):
  # V3's rule (4 groups of 2, 2 kept, top-2 sum). Measured 2026-12-06: 283,
  # 76, 53, 27, 15, 8, 4, 4, 2, 3 choices off.
  worst = _worst(_loads(skewed, V3, 2, 10))
  assert worst[0] > 250 and worst[6:].max() <= 0.05 * 128, worst
  # Solving as if every expert were eligible settles far off (48 off).
  ungrouped = _worst(_loads(skewed, V3, 2, 10, eligible=False))
  assert ungrouped[6:].min() >= 0.3 * 128, ungrouped


def test_solve_with_eligible_experts_matches_a_float64_reference():
  rng = np.random.default_rng(4)
  t, e, k = 24, 8, 2
  s = rng.uniform(size=(t, e))
  b = rng.normal(size=e) * 0.1
  eligible = rng.uniform(size=(t, e)) < 0.6
  eligible[:3] = [True] * 3 + [False] * 5  # Only K + 1 eligible.
  eligible[3] = [True] * 2 + [False] * 6  # Only K: α over every expert.
  alpha = []
  for row, ok in zip(s + b, eligible):
    pool = row[ok] if ok.sum() > k else row
    alpha.append(np.sort(pool)[::-1][k])
  margins = s - np.array(alpha)[:, None]
  margins = np.where(eligible, margins, margins.min())
  n = t * k // e
  want = [-np.sort(margins[:, j])[::-1][n] for j in range(e)]
  got = qb.solve_bias(jnp.asarray(s, jnp.float32)[None],
                      jnp.asarray(b, jnp.float32), k,
                      eligible=jnp.asarray(eligible)[None])
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_gates_gradient_and_no_gradient_into_the_solve():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.permutation(48).reshape(2, 3, 8) * 0.2 - 4,
                       jnp.float32)
  bias = jnp.asarray(rng.normal(size=8) * 0.05, jnp.float32)
  r = jnp.asarray(rng.normal(size=(2, 3, 2)), jnp.float32)

  def gates(lg):
    plan, _ = deepseek.deepseek_top_k(lg, capacity=None, k=2, options=V3,
                                      bias=bias, solve_quantile=True)
    return jnp.sum(plan.combine_weights * r)

  check_grads(jax.jit(gates), (logits,), order=1, modes=['rev'], eps=1e-3)

  def solved(lg, b):
    _, aux = deepseek.deepseek_top_k(lg, capacity=None, k=2, options=V3,
                                     bias=b, solve_quantile=True)
    return jnp.sum(aux['quantile_bias'] * jnp.arange(8.0))

  for g in _jit(jax.grad(solved, argnums=(0, 1)))(logits, bias):
    assert not np.any(g)


def _config(**options):
  return MoEConfig(router='deepseek', top_k=2,
                   router_options={'deepseek': options})


def test_quantile_config_has_a_bias_and_updates_by_the_solve():
  config = _config(bias_update='quantile', quantile_weight=0.5)
  assert config.has_router_bias and not _config().has_router_bias
  new = config.spec.update_state(
      {'router_bias': jnp.zeros(8)},
      {'quantile_bias': jnp.arange(8.0), 'expert_load': jnp.ones(8)},
      config.router_options)
  np.testing.assert_allclose(new['router_bias'], 0.5 * (np.arange(8) - 3.5))
  # The sign rule still moves by ±γ from the load.
  sign = _config(bias_update_rate=1e-3)
  new = sign.spec.update_state(
      {'router_bias': jnp.zeros(8)},
      {'expert_load': jnp.arange(8.0)}, sign.router_options)
  np.testing.assert_allclose(new['router_bias'], [1e-3] * 4 + [-1e-3] * 4)
  # Route in training adds the solve; eval skips it.
  inputs = RouterInputs(jnp.zeros((1, 8, 8)), jnp.zeros((1, 8, 4)),
                        {'router_bias': jnp.zeros(8)})
  assert 'quantile_bias' in config.route(inputs, train=True, capacity=None)[1]
  assert 'quantile_bias' not in config.route(inputs, train=False,
                                             capacity=None)[1]
  # Gradient accumulation refuses it, as the sigmoid router's QB.
  assert 'deepseek' in config.spec.batch_pooled(config)
  assert _config(bias_update_rate=1e-3).spec.batch_pooled(sign) is None
