"""axlearn's adaptive balance-loss weight: the rule, its state, refusals."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core import adaptive_balance as ab
from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.errors import UserInputError
from testlib import moe_params

ZERO = {name: jnp.zeros(()) for name in ab.STATE}


def _run(values, options):
  state, scales = dict(ZERO), []
  for v in values:
    state = ab.step(state, jnp.float32(v), options)
    scales.append(float(jnp.exp(state['balance_log_scale'])))
  return state, scales


def test_rule_by_hand():
  # axlearn's test band: 0.4..0.6, min_weight 0.2, ε = 0.01.
  options = ab.AdaptiveBalance(log_step=0.01, min_over_capacity=0.4,
                               max_over_capacity=0.6, average_min_weight=0.2)
  state, scales = _run([0.5, 1.2, 0.2, 0.0, 0.0], options)
  # Averages (weights 1, 1/2, 1/3, 1/4, then the floor 0.2):
  # 0.5 (in band), 0.85 (above: +ε), 0.6333 (above: +ε), 0.475 (in band),
  # 0.38 (below: −ε).
  np.testing.assert_allclose(float(state['over_capacity_average']), 0.38,
                             rtol=1e-6)
  np.testing.assert_allclose(np.log(scales), [0, 0.01, 0.02, 0.02, 0.01],
                             atol=1e-6)
  assert float(state['over_capacity_count']) == 5


def test_rule_matches_a_float64_reference():
  options = ab.AdaptiveBalance(log_step=0.05, min_over_capacity=0.02,
                               max_over_capacity=0.1, average_min_weight=0.1)
  rng = np.random.default_rng(0)
  # Overflowing, then nearly none, then inside the band.
  values = np.concatenate([rng.uniform(0.1, 0.3, 20), rng.uniform(0, 0.01, 30),
                           rng.uniform(0.04, 0.07, 40)])

  @jax.jit
  def scan(values):
    def body(state, v):
      state = ab.step(state, v, options)
      return state, state['balance_log_scale']
    return jax.lax.scan(body, ZERO, values)[1]

  log_scale, avg, want = 0.0, 0.0, []
  for c, v in enumerate(values):
    w = max(0.1, 1.0 / (c + 1))
    avg = (1 - w) * avg + w * float(v)
    log_scale += 0.05 * ((avg > 0.1) - (avg < 0.02))
    want.append(log_scale)
  np.testing.assert_allclose(scan(jnp.asarray(values, jnp.float32)), want,
                             atol=1e-5)
  assert len(set(np.sign(np.diff(want)))) == 3  # Up, down and still.


def _config(**kwargs):
  base = dict(router='topk', top_k=2, num_experts=4, d_ff=6,
              capacity_factor=0.5, min_capacity=1, load_balance_weight=0.1,
              z_loss_weight=0.01,
              adaptive_balance={'log_step': 0.25, 'max_over_capacity': 0.05})
  return MoEConfig(**{**base, **kwargs})


def _inputs(config, log_scale=0.5):
  params = moe_params(0, 4, 6, 4)
  params.update(ZERO)
  params['balance_log_scale'] = jnp.float32(log_scale)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 8, 4)),
                  jnp.float32)
  return params, x


def test_layer_weights_its_balance_loss_and_steps_its_state():
  config = _config()
  assert config.has_router_bias  # Router state: RoutedTrainState carries it.
  params, x = _inputs(config)
  y, aux = moe_apply(params, x, config, train=True)
  r = float(np.max(aux['dropped_fraction']))
  assert r > 0.05  # cf 0.5 drops: the first average is r, above the band.
  np.testing.assert_allclose(aux['over_capacity_average'], r, rtol=1e-6)
  np.testing.assert_allclose(aux['balance_log_scale'], 0.75, rtol=1e-6)
  np.testing.assert_allclose(aux['balance_weight'], 0.1 * np.exp(0.75),
                             rtol=1e-6)
  np.testing.assert_allclose(
      aux['aux_loss'], 0.1 * np.exp(0.75) * aux['load_balance_loss'] +
      0.01 * aux['z_loss'], rtol=1e-6)
  new = config.update_state(dict(ZERO), aux)
  assert sorted(new) == sorted(ab.STATE)
  # Evaluation reads the weight and moves nothing.
  _, eval_aux = moe_apply(params, x, config, train=False)
  np.testing.assert_allclose(eval_aux['balance_weight'], 0.1 * np.exp(0.5),
                             rtol=1e-6)
  assert float(eval_aux['over_capacity_count']) == 0
  # Routing is untouched: the output equals the fixed-weight layer's, so
  # the weight adds no lookahead (causality is the router's own).
  y_fixed, _ = moe_apply(params, x, _config(adaptive_balance=None),
                         train=True)
  assert np.asarray(y).tobytes() == np.asarray(y_fixed).tobytes()


def test_gradients_scale_the_balance_loss_and_skip_the_state():
  config = _config()
  params, x = _inputs(config)

  def aux_loss(kernel, log_scale):
    p = {**params, 'router_kernel': kernel, 'balance_log_scale': log_scale}
    return moe_apply(p, x, config, train=True)[1]['aux_loss']

  kernel, log_scale = params['router_kernel'], params['balance_log_scale']
  check_grads(lambda k: aux_loss(k, log_scale), (kernel,), order=1,
              modes=['rev'], eps=1e-3)
  assert not np.any(jax.grad(aux_loss, argnums=1)(kernel, log_scale))
  # The router gradient is the fixed-weight one at α·exp(ℓ).
  fixed = _config(adaptive_balance=None, load_balance_weight=0.1 *
                  float(np.exp(0.75)))
  g_fixed = jax.grad(lambda k: moe_apply({**params, 'router_kernel': k}, x,
                                         fixed, train=True)[1]['aux_loss'])
  np.testing.assert_allclose(jax.grad(aux_loss)(kernel, log_scale),
                             g_fixed(kernel), rtol=1e-4, atol=1e-7)


def test_weight_climbs_while_a_skewed_router_overflows():
  # A router stuck on e0, cf 1: half the choices drop every step, so after
  # the first step ℓ rises by ε each step (no learning here).
  config = _config(capacity_factor=1.0)
  params, x = _inputs(config, log_scale=0.0)
  params['router_kernel'] = params['router_kernel'].at[:, 0].add(20.0)
  state = dict(ZERO)
  for _ in range(4):
    _, aux = moe_apply({**params, **state}, x, config, train=True)
    state = config.update_state(state, aux)
  np.testing.assert_allclose(state['balance_log_scale'], 4 * 0.25, rtol=1e-6)


@pytest.mark.parametrize('kwargs,match', [
    (dict(adaptive_balance={'log_step': -0.1}), 'log_step'),
    (dict(adaptive_balance={'log_step': 0.01, 'max_over_capacity': 1e-4}),
     'max_over_capacity'),
    (dict(adaptive_balance={'log_step': 0.01, 'min_over_capacity': -1.0}),
     'min_over_capacity'),
    (dict(adaptive_balance={'log_step': 0.01, 'average_min_weight': 0.0}),
     'average_min_weight'),
    (dict(adaptive_balance={'log_step': 0.01, 'average_min_weight': 2.0}),
     'average_min_weight'),
    (dict(adaptive_balance={'logstep': 0.01}), "no field 'logstep'"),
    (dict(adaptive_balance=0.01), 'mapping'),
    (dict(dispatcher='dropless'), "dispatcher='dropless'"),
    (dict(router='expert_choice', top_k=1), "router='expert_choice'"),
    (dict(router='soft', top_k=1), "router='soft'"),
    (dict(router='uniform'), "router='uniform'"),
    (dict(load_balance_weight=0.0), 'load_balance_weight'),
])
def test_bad_adaptive_balance_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    _config(**kwargs)
  assert '\n' not in str(e.value)
