"""Quantile balancing (QB) of the sigmoid router's selection bias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core.config import MoEConfig
from moe_jax.core.routing import RouterInputs
from moe_jax.core.routing import quantile_balance as qb
from moe_jax.core.routing import sigmoid as sigmoid_router
from moe_jax.errors import UserInputError


def _solve_reference(scores, bias, k):
  """The rule of quantile_balance.py, token by token, in float64."""
  s = np.asarray(scores, np.float64).reshape(-1, scores.shape[-1])
  b = np.asarray(bias, np.float64)
  t, e = s.shape
  alpha = np.array([np.sort(row + b)[::-1][k] for row in s])
  n = min(t * k // e, t - 1)
  return np.array([-np.sort(s[:, j] - alpha)[::-1][n] for j in range(e)])


def test_solve_by_hand():
  # Every token's best is e0 (load 4, 0, 0, 0); K = 1, n = T·K/E = 1.
  s = np.float32([[0.9, 0.5, 0.2, 0.1],
                  [0.8, 0.6, 0.3, 0.1],
                  [0.7, 0.2, 0.4, 0.3],
                  [0.6, 0.1, 0.2, 0.5]])
  # α = second best = (0.5, 0.6, 0.4, 0.5); margins s − α per expert,
  # sorted down: e0 (.4 .3 .2 .1), e1 (0 0 −.2 −.4), e2 (0 −.3 −.3 −.3),
  # e3 (0 −.1 −.4 −.5); b = −(2nd largest) = (−.3, 0, .3, .1).
  got = qb.solve_bias(jnp.asarray(s)[None], jnp.zeros(4), 1)
  np.testing.assert_allclose(got, [-0.3, 0.0, 0.3, 0.1], atol=1e-6)
  # Routed with it, each expert takes one token (t1 ties e1/e2; lower wins).
  np.testing.assert_array_equal(np.argmax(s + np.asarray(got), -1),
                                [0, 1, 2, 3])


def test_solve_matches_a_float64_reference():
  rng = np.random.default_rng(0)
  for k, shape in ((1, (2, 8, 4)), (2, (3, 16, 8)), (3, (1, 10, 6))):
    scores = rng.uniform(size=shape).astype(np.float32)
    bias = (rng.normal(size=shape[-1]) * 0.1).astype(np.float32)
    got = jax.jit(qb.solve_bias, static_argnums=2)(scores, bias, k)
    np.testing.assert_allclose(got, _solve_reference(scores, bias, k),
                               atol=1e-6, err_msg=f'k={k}')


def test_ema_update_and_centring_by_hand():
  new = qb.update_bias(jnp.array([0.2, 0.0, -0.2, 0.0]),
                       jnp.array([1.0, 0.0, 0.0, 3.0]), 0.5)
  # 0.5·b + 0.5·solved = (0.6, 0, −0.1, 1.5), mean 0.5.
  np.testing.assert_allclose(new, [0.1, -0.5, -0.6, 1.0], atol=1e-6)
  whole = qb.update_bias(jnp.ones(4), jnp.array([1.0, 2.0, 3.0, 6.0]), 1.0)
  np.testing.assert_allclose(whole, [-2.0, -1.0, 0.0, 3.0], atol=1e-6)


def test_centring_changes_no_choice():
  # A common shift of the bias moves the solve by the same shift.
  rng = np.random.default_rng(1)
  scores = jnp.asarray(rng.uniform(size=(2, 8, 4)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=4) * 0.1, jnp.float32)
  a = qb.solve_bias(scores, bias, 1)
  b = qb.solve_bias(scores, bias + 0.25, 1)
  np.testing.assert_allclose(b, a + 0.25, atol=1e-6)


def _max_violation_curve(logits, k, update, steps):
  e = logits.shape[-1]

  @jax.jit
  def run(logits):
    def step(bias, _):
      _, aux = sigmoid_router.sigmoid_top_k(
          logits, capacity=None, k=k, bias=bias, solve_quantile=True)
      return update(bias, aux), aux['max_violation']
    return jax.lax.scan(step, jnp.zeros(e), None, length=steps)

  return np.asarray(run(logits)[1])


def test_quantile_balances_a_skewed_router_in_a_few_steps():
  # The skewed router of test_core_sigmoid.py's sign-rule test: QB must get
  # MaxVio under 0.5 in one solve and under 0.1 in three, where the ±γ rule
  # (γ = 0.01) is still above 1.5 after five steps.
  rng = np.random.default_rng(0)
  e, k = 8, 2
  logits = jnp.asarray(rng.normal(size=(16, 32, e)) +
                       np.array([2.0, 1.5] + [0.0] * (e - 2)), jnp.float32)
  quantile = _max_violation_curve(
      logits, k, lambda b, aux: qb.update_bias(b, aux['quantile_bias'], 1.0),
      10)
  sign = _max_violation_curve(
      logits, k, lambda b, aux: sigmoid_router.update_bias(
          b, aux['expert_load'], 0.01), 10)
  assert quantile[0] > 2.0 and sign[0] == quantile[0]
  assert quantile[1] < 0.5 and quantile[3:].max() < 0.1, quantile
  assert sign[5] > 1.5, sign
  # The EMA (w = 0.5) gets there too, more slowly.
  ema = _max_violation_curve(
      logits, k, lambda b, aux: qb.update_bias(b, aux['quantile_bias'], 0.5),
      10)
  assert ema[1] > quantile[1] and ema[-1] < 0.1, ema


def test_gates_gradient_and_no_gradient_into_the_solve():
  rng = np.random.default_rng(2)
  logits = jnp.asarray(rng.permutation(24).reshape(2, 3, 4) * 0.3 - 3,
                       jnp.float32)
  bias = jnp.array([0.0, 0.1, -0.1, 0.05])
  r = jnp.asarray(rng.normal(size=(2, 3, 2)), jnp.float32)

  def gates(lg):
    plan, _ = sigmoid_router.sigmoid_top_k(lg, capacity=None, k=2, bias=bias,
                                           solve_quantile=True)
    return jnp.sum(plan.combine_weights * r)

  check_grads(jax.jit(gates), (logits,), order=1, modes=['rev'], eps=1e-3)

  def solved(lg, b):
    _, aux = sigmoid_router.sigmoid_top_k(lg, capacity=None, k=2, bias=b,
                                          solve_quantile=True)
    return jnp.sum(aux['quantile_bias'] * jnp.arange(4.0))

  for g in jax.grad(solved, argnums=(0, 1))(logits, bias):
    assert not np.any(g)


def test_quantile_config_has_a_bias_and_updates_by_the_solve():
  config = MoEConfig(router='sigmoid', top_k=2, router_options={
      'sigmoid': {'bias_update': 'quantile', 'quantile_weight': 0.5}})
  assert config.has_router_bias
  new = config.spec.update_state(
      {'router_bias': jnp.zeros(8)},
      {'quantile_bias': jnp.arange(8.0), 'expert_load': jnp.ones(8)},
      config.router_options)
  np.testing.assert_allclose(new['router_bias'], 0.5 * (np.arange(8) - 3.5))
  # Route in training adds the solve; eval skips it.
  inputs = RouterInputs(jnp.zeros((1, 8, 8)), jnp.zeros((1, 8, 4)),
                        {'router_bias': jnp.zeros(8)})
  assert 'quantile_bias' in config.route(inputs, train=True, capacity=None)[1]
  assert 'quantile_bias' not in config.route(inputs, train=False,
                                             capacity=None)[1]


@pytest.mark.parametrize('router', ['sigmoid', 'deepseek'])
@pytest.mark.parametrize('options,extra,match', [
    ({'bias_update': 'qb'}, {}, 'bias_update'),
    ({'bias_update': 'quantile', 'bias_update_rate': 1e-3}, {},
     'bias_update_rate'),
    ({'quantile_weight': 0.5}, {}, 'quantile_weight'),
    ({'bias_update': 'quantile', 'quantile_weight': 0.0}, {},
     'quantile_weight'),
    ({'bias_update': 'quantile', 'quantile_weight': 1.5}, {},
     'quantile_weight'),
    ({'bias_update': 'quantile'}, {'num_experts': 2},
     'bias_update.*top_k < num_experts'),
])
def test_bad_quantile_options_are_one_line(router, options, extra, match):
  # Both routers with a selection bias share these options (and checks);
  # each message names the router's own options.
  with pytest.raises(UserInputError,
                     match=f'router_options.{router}.{match}') as e:
    MoEConfig(**{'router': router, 'top_k': 2,
                 'router_options': {router: options}, **extra})
  assert '\n' not in str(e.value)


def test_routing_is_lookahead_free_and_only_the_solve_reads_ahead():
  # The bias a batch is routed with was solved from earlier batches: changing
  # later tokens changes this batch's solve (the next step's bias) but not
  # an earlier token's experts or gates.
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(2, 16, 8)).astype(np.float32)
  later = logits.copy()
  later[:, 8:] = rng.normal(size=(2, 8, 8)) * 3
  bias = jnp.asarray(rng.normal(size=8) * 0.2, jnp.float32)
  route = jax.jit(lambda lg: sigmoid_router.sigmoid_top_k(
      lg, capacity=None, k=2, bias=bias, solve_quantile=True))
  (plan_a, aux_a), (plan_b, aux_b) = route(logits), route(later)
  for name in ('expert_index', 'combine_weights'):
    a, b = getattr(plan_a, name), getattr(plan_b, name)
    assert np.asarray(a[:, :8]).tobytes() == np.asarray(b[:, :8]).tobytes()
  assert np.any(aux_a['quantile_bias'] != aux_b['quantile_bias'])
