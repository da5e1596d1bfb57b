"""Tests for the switch, gshard and topk routers (moe_jax.core.routing) on
hand-computed logits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.core.routing import common as routing_common
from moe_jax.core.routing import gshard as gshard_lib
from moe_jax.core.routing import switch as switch_lib
from moe_jax.core.routing import topk as topk_lib
from moe_jax.core.plan import DROPPED
from moe_jax.errors import UserInputError


# Tiny shapes: XLA's backend optimisations cost more compile time than
# they save at run time, and compiles dominate these tests.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


@functools.lru_cache(maxsize=None)
def _jitted(router, **static):
  return _jit(lambda l, k: router(l, key=k, **static))


def _route(router, logits, key=None, **static):
  """Runs a router under jit with its static options bound.

  One compile per (router, options, shape) is much cheaper on CPU than eager
  op-by-op dispatch, and the cache shares it between tests.
  """
  return _jitted(router, **static)(logits, key)


def _log(p):
  """Logits whose softmax is exactly the rows of p (rows sum to 1)."""
  return np.log(np.asarray(p, np.float32))[None]  # [1, S, E]


# ------------------------------------------------------------------ switch

_SWITCH_P = [[0.7, 0.2, 0.1],
             [0.6, 0.3, 0.1],
             [0.1, 0.5, 0.4],
             [0.8, 0.1, 0.1]]


def test_switch_routes_to_argmax_with_raw_gate_and_drops_in_order():
  plan, aux = _route(switch_lib.switch_top1, _log(_SWITCH_P), capacity=2)
  np.testing.assert_array_equal(plan.expert_index[0, :, 0], [0, 0, 1, 0])
  # t3 is the third token for e0 at capacity 2: dropped, gate exactly 0.
  np.testing.assert_array_equal(plan.slot[0, :, 0], [0, 1, 0, DROPPED])
  # The raw probability, NOT renormalised to 1.
  np.testing.assert_allclose(plan.combine_weights[0, :, 0],
                             [0.7, 0.6, 0.5, 0.0], atol=1e-6)
  assert plan.combine_weights[0, 3, 0] == 0.0
  assert plan.capacity == 2 and plan.num_experts == 3
  np.testing.assert_allclose(aux['dropped_fraction'], [0.25])


def test_switch_without_capacity_keeps_everything():
  plan, _ = _route(switch_lib.switch_top1, _log(_SWITCH_P), capacity=None)
  np.testing.assert_array_equal(plan.slot[0, :, 0], [0, 1, 0, 2])
  np.testing.assert_allclose(plan.combine_weights[0, :, 0],
                             [0.7, 0.6, 0.5, 0.8], atol=1e-6)


# ------------------------------------------------------------------ gshard

# Top-2 per token: t0 (e0 .5, e1 .3), t1 (e1 .6, e0 .2), t2 (e3 .4, e2 .3),
# t3 (e0 .45, e3 .4).
_GSHARD_P = [[0.5, 0.3, 0.1, 0.1],
             [0.2, 0.6, 0.15, 0.05],
             [0.1, 0.2, 0.3, 0.4],
             [0.45, 0.05, 0.1, 0.4]]
_GSHARD_EXPERTS = [[0, 1], [1, 0], [3, 2], [0, 3]]
_GSHARD_GATES = [[0.5 / 0.8, 0.3 / 0.8],
                 [0.6 / 0.8, 0.2 / 0.8],
                 [0.4 / 0.7, 0.3 / 0.7],
                 [0.45 / 0.85, 0.4 / 0.85]]


def test_gshard_all_policy_hand_case():
  plan, aux = _route(gshard_lib.gshard_top2, _log(_GSHARD_P), capacity=2,
                     second_policy='all')
  np.testing.assert_array_equal(plan.expert_index[0], _GSHARD_EXPERTS)
  # First choices fill e0 (t0, t3), e1 (t1), e3 (t2). Then second choices:
  # t0->e1 fits, t1->e0 finds e0 full (dropped), t2->e2 and t3->e3 fit.
  np.testing.assert_array_equal(
      plan.slot[0], [[0, 1], [0, DROPPED], [0, 0], [1, 1]])
  want = np.array(_GSHARD_GATES)
  want[1, 1] = 0.0
  np.testing.assert_allclose(plan.combine_weights[0], want, atol=1e-6)
  assert plan.combine_weights[0, 1, 1] == 0.0
  np.testing.assert_allclose(aux['dropped_fraction'], [0.0, 0.25])


def test_topk_k2_matches_gshard_all():
  # Softmax over the top-2 logits = full softmax renormalised over the pair.
  g_plan, _ = _route(gshard_lib.gshard_top2, _log(_GSHARD_P), capacity=2,
                     second_policy='all')
  t_plan, _ = _route(topk_lib.top_k, _log(_GSHARD_P), capacity=2, k=2)
  for field in ('expert_index', 'slot'):
    np.testing.assert_array_equal(getattr(t_plan, field),
                                  getattr(g_plan, field))
  np.testing.assert_allclose(t_plan.combine_weights, g_plan.combine_weights,
                             atol=1e-6)


def test_topk_gates_are_softmax_over_top_logits():
  logits = jnp.array([[[2.0, 1.0, 0.0, -1.0],
                       [0.0, 3.0, -2.0, 1.0]]])
  plan, _ = _route(topk_lib.top_k, logits, capacity=None, k=3)
  np.testing.assert_array_equal(plan.expert_index[0], [[0, 1, 2], [1, 3, 0]])
  e = np.exp
  want0 = e([2.0, 1.0, 0.0]) / e([2.0, 1.0, 0.0]).sum()
  want1 = e([3.0, 1.0, 0.0]) / e([3.0, 1.0, 0.0]).sum()
  np.testing.assert_allclose(plan.combine_weights[0], [want0, want1],
                             rtol=1e-6)
  # k=1: the single gate is exactly 1 (why switch uses the raw gate).
  plan1, _ = _route(topk_lib.top_k, logits, capacity=None, k=1)
  np.testing.assert_array_equal(plan1.combine_weights[0, :, 0], [1.0, 1.0])


def test_topk_drops_at_capacity():
  # Every token's top-2 is (e0, e1): first choices fill e0 at capacity 2,
  # so t2 loses its first choice; second choices fill e1 with t0, t1.
  logits = jnp.array([[[3.0, 2.0, 0.0],
                       [3.0, 1.0, 0.0],
                       [2.0, 1.5, 0.0]]])
  plan, aux = _route(topk_lib.top_k, logits, capacity=2, k=2)
  np.testing.assert_array_equal(plan.slot[0],
                                [[0, 0], [1, 1], [DROPPED, DROPPED]])
  np.testing.assert_array_equal(plan.combine_weights[0, 2], [0.0, 0.0])
  np.testing.assert_allclose(aux['unrouted_fraction'], 1 / 3)


# --------------------------------------------------------- second policies

_N = 4000  # Tokens for the statistical checks: 1 group of S=_N.


def _constant_logits(p, n=_N):
  row = np.log(np.asarray(p, np.float32))
  return np.broadcast_to(row, (1, n, len(p)))


def test_gshard_random_routes_second_choice_with_prob_2g2():
  # Normalised g2 = 0.3 / (0.7 + 0.3) = 0.3 everywhere, so P(route) = 0.6.
  # The last two experts get ~0 probability so p1 + p2 = 1 to ~1e-9.
  logits = _constant_logits([0.7, 0.3, 1e-9, 1e-9])
  plan, aux = _route(gshard_lib.gshard_top2, logits, key=jax.random.key(0),
                     capacity=None, second_policy='random')
  kept = np.asarray(plan.kept)
  w = np.asarray(plan.combine_weights[0])
  np.testing.assert_allclose(w[:, 0], 0.7, atol=1e-6)
  np.testing.assert_allclose(w[kept[0, :, 1], 1], 0.3, atol=1e-6)
  assert kept[..., 0].all()  # First choices are always routed.
  rate = kept[..., 1].mean()
  # Binomial std is sqrt(0.24 / 4000) ≈ 0.008; ±0.04 is 5 sigma.
  assert abs(rate - 0.6) < 0.04, rate
  # Skipped second choices carry weight exactly 0 and are not 'dropped'.
  assert (np.asarray(plan.combine_weights)[..., 1][~kept[..., 1]] == 0).all()
  np.testing.assert_allclose(aux['dropped_fraction'], [0.0, 0.0])


def test_gshard_all_routes_every_second_choice():
  logits = _constant_logits([0.7, 0.3, 1e-9, 1e-9], n=64)
  plan, _ = _route(gshard_lib.gshard_top2, logits, capacity=None,
                   second_policy='all')
  assert np.asarray(plan.kept).all()


def test_gshard_sampling_samples_second_expert_proportional_to_p():
  p = np.array([0.5, 0.25, 0.15, 0.1])
  plan, _ = _route(gshard_lib.gshard_top2, _constant_logits(p),
                   key=jax.random.key(1), capacity=None,
                   second_policy='sampling')
  e1 = np.asarray(plan.expert_index[0, :, 0])
  e2 = np.asarray(plan.expert_index[0, :, 1])
  assert (e1 == 0).all()
  assert (e2 != e1).all()  # Never picks the first expert again.
  assert np.asarray(plan.kept).all()  # Sampled choices are always routed.
  freq = np.bincount(e2, minlength=4) / _N
  # ∝ p over experts 1..3: 0.25, 0.15, 0.1 -> 0.5, 0.3, 0.2 (std <= 0.008).
  np.testing.assert_allclose(freq, [0.0, 0.5, 0.3, 0.2], atol=0.04)
  # Gates are renormalised over the sampled pair.
  w = np.asarray(plan.combine_weights[0])
  np.testing.assert_allclose(w[:, 1], p[e2] / (p[0] + p[e2]), atol=1e-6)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)


@pytest.mark.parametrize('policy', ['random', 'sampling'])
def test_random_policies_need_a_key(policy):
  with pytest.raises(UserInputError, match=policy):
    gshard_lib.gshard_top2(_log(_GSHARD_P), capacity=2, second_policy=policy)


def test_unknown_second_policy_raises():
  with pytest.raises(UserInputError, match='second_policy'):
    gshard_lib.gshard_top2(_log(_GSHARD_P), capacity=2, second_policy='greedy',
                        key=jax.random.key(0))


@pytest.mark.parametrize('policy', ['random', 'sampling'])
def test_same_key_same_plan(policy):
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 64, 4)),
                       jnp.float32)

  route = _jit(lambda k: gshard_lib.gshard_top2(
      logits, capacity=20, key=k, second_policy=policy)[0])
  a, b, c = (route(jax.random.key(s)) for s in (3, 3, 4))
  for field in ('expert_index', 'slot', 'combine_weights'):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
  # And the key matters (otherwise the check above is vacuous).
  assert not (np.array_equal(a.slot, c.slot) and
              np.array_equal(a.expert_index, c.expert_index))


# --------------------------------------------------------------- precision

def _top_gates(p, k, renormalise):
  top = -np.sort(-p, axis=-1)[..., :k]
  return top / top.sum(-1, keepdims=True) if renormalise else top


_ROUTERS = {
    'switch': (lambda l: _route(switch_lib.switch_top1, l, capacity=None),
               lambda p: _top_gates(p, 1, False)),
    'gshard': (lambda l: _route(gshard_lib.gshard_top2, l, capacity=None,
                                second_policy='all'),
               lambda p: _top_gates(p, 2, True)),
    'topk2': (lambda l: _route(topk_lib.top_k, l, capacity=None, k=2),
              lambda p: _top_gates(p, 2, True)),
}


@pytest.mark.parametrize('name', list(_ROUTERS))
def test_router_math_is_float32_for_bf16_logits(name):
  route, gates_of = _ROUTERS[name]
  # Test inputs come from numpy: eager jax.random costs a compile per call.
  logits16 = jnp.asarray(3.0 * np.random.default_rng(5).normal(size=(1, 16, 4)),
                         jnp.bfloat16)
  logits = np.asarray(logits16.astype(jnp.float32), np.float64)  # Exact.
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  want = gates_of(p)
  plan, aux = route(logits16)
  assert plan.combine_weights.dtype == jnp.float32
  assert aux['load_balance_loss'].dtype == jnp.float32
  assert aux['z_loss'].dtype == jnp.float32
  # bf16 gates would be off by up to ~4e-3; float32 math is within ~1e-7.
  rounded = want.astype(jnp.bfloat16).astype(np.float64)
  assert np.abs(want - rounded).max() > 1e-4  # The check can tell them apart.
  np.testing.assert_allclose(plan.combine_weights, want, rtol=1e-6, atol=1e-7)
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(aux['z_loss'], np.mean(lse**2), rtol=1e-6)


def test_top_k_experts_is_the_same_with_and_without_a_mesh():
  """lax.top_k without a mesh, argmax passes under one: same values and
  indices, ties (many here) to the lower index."""
  scores = jnp.asarray(np.random.default_rng(0).integers(0, 4, (2, 16, 8)),
                       jnp.float32)
  values, indices = routing_common.top_k_experts(scores, 3)
  with jax.set_mesh(jax.make_mesh((1,), ('data',))):
    mesh_values, mesh_indices = routing_common.top_k_experts(scores, 3)
  np.testing.assert_array_equal(mesh_values, values)
  np.testing.assert_array_equal(mesh_indices, indices)
  np.testing.assert_array_equal(indices[..., 0], jnp.argmax(scores, axis=-1))
