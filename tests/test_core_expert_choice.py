"""Expert choice routing: hand-computed picks, causality, gradients, config."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from moe_jax.core.routing import expert_choice as ec
from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.core.plan import DROPPED
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from testlib import moe_params, positions_changed_by_later_tokens

_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _log(p):
  return np.log(np.asarray(p, np.float32))[None]  # [1, S, E]


def test_group_choice_hand_computed():
  # C = 1: e0 and e1 both pick t0 (0.45 each); e2 picks t3 (0.8). t0 gets
  # two experts, t1 and t2 none, t3 one.
  p = [[0.45, 0.45, 0.1], [0.3, 0.3, 0.4], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]
  plan, aux = _jit(functools.partial(ec.expert_choice, capacity=1,
                                     causal=False))(_log(p))
  np.testing.assert_array_equal(plan.expert_index[0], [[0, 1, 2]] * 4)
  np.testing.assert_array_equal(
      plan.slot[0], [[0, 0, -1], [-1, -1, -1], [-1, -1, -1], [-1, -1, 0]])
  np.testing.assert_allclose(
      plan.combine_weights[0],
      [[0.45, 0.45, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0.8]], atol=1e-6)
  assert plan.capacity == 1
  np.testing.assert_allclose(aux['experts_per_token'], [0.5, 0.25, 0.25, 0])
  np.testing.assert_allclose(aux['unrouted_fraction'], 0.5)
  np.testing.assert_allclose(aux['max_violation'], 0.0)  # All exactly full.
  assert float(aux['load_balance_loss']) == 0.0


def test_causal_choice_hand_computed():
  # Q = S = 4, C_q = 2: a token is a candidate if it ranks below
  # ceil(n·2/4) = 1, 1, 2, 2 among the n tokens so far.
  # e0 scores .9 .6 .3 .2: only t0 ranks first. e1 scores .1 .4 .7 .8 rise,
  # so every token is a candidate, and the buffer of 2 keeps t0, t1.
  p0 = np.array([0.9, 0.6, 0.3, 0.2])
  p = np.stack([p0, 1 - p0], -1)
  plan, aux = _jit(functools.partial(ec.expert_choice, capacity=2,
                                     causal=True, chunk=4))(_log(p))
  np.testing.assert_array_equal(
      plan.slot[0], [[0, 0], [DROPPED, 1], [DROPPED, DROPPED],
                     [DROPPED, DROPPED]])
  np.testing.assert_allclose(plan.combine_weights[0],
                             [[0.9, 0.1], [0, 0.4], [0, 0], [0, 0]], atol=1e-6)
  # e1's t2 and t3 were candidates that found the buffer full.
  np.testing.assert_allclose(aux['dropped_fraction'], [0.0, 0.5])
  np.testing.assert_allclose(aux['experts_per_token'], [0.5, 0.25, 0.25])


def test_causal_buffers_are_per_chunk():
  # Q = 2, C_q = 1 over S = 4: two chunks, slots 0 (chunk 0) and 1 (chunk 1).
  p0 = np.array([0.9, 0.6, 0.8, 0.95])
  p = np.stack([p0, 1 - p0], -1)
  plan, _ = _jit(functools.partial(ec.expert_choice, capacity=1, causal=True,
                                   chunk=2))(_log(p))
  assert plan.capacity == 2
  # e0: t0 is first in its window; t1 (.6 < .9) is not. t2 beats t1 (the
  # window {t1, t2}) and takes chunk 1's slot; t3 (.95) also beats t2 but
  # chunk 1's buffer is full.
  np.testing.assert_array_equal(plan.slot[0, :, 0], [0, DROPPED, 1, DROPPED])


def test_window_rank_matches_brute_force():
  probs = jax.random.uniform(jax.random.key(0), (2, 12, 3))
  got = np.asarray(ec.window_rank(probs, 5))
  p = np.asarray(probs)
  for t in range(12):
    earlier = p[:, max(0, t - 4):t]  # [G, <=4, E]
    want = np.sum(earlier >= p[:, t:t + 1], axis=1)
    np.testing.assert_array_equal(got[:, t], want)


@pytest.mark.parametrize('causal', [True, False])
def test_expert_choice_gates_gradient(causal):
  # Well-separated logits, so a small step changes no selection.
  logits = jnp.asarray(np.random.default_rng(1).permutation(24).reshape(
      1, 8, 3) * 0.3, jnp.float32)
  r = jnp.asarray(np.random.default_rng(2).normal(size=(1, 8, 3)), jnp.float32)

  def f(lg):
    plan, aux = ec.expert_choice(lg, capacity=2, causal=causal, chunk=4)
    return jnp.sum(plan.combine_weights * r) + aux['z_loss']

  check_grads(jax.jit(f), (logits,), order=1, modes=['rev'], eps=1e-3)


# ------------------------------------------------------------ causality --

B, L, D, E = 2, 16, 8, 4


def _layer(causal):
  config = MoEConfig(router='expert_choice', num_experts=E, d_ff=8,
                     capacity_factor=1.0, min_capacity=1,
                     causal_routing=causal, causal_chunk=4)
  params = moe_params(0, D, 8, E)
  return _jit(lambda x: moe_apply(params, x, config, train=True)[0])


def _earlier_outputs_change(causal) -> list[int]:
  """Positions t whose output changed when only tokens after t changed."""
  rng = np.random.default_rng(0)
  x = rng.normal(size=(B, L, D)).astype(np.float32)
  return positions_changed_by_later_tokens(_layer(causal), x, rng)


def test_causal_expert_choice_does_not_see_the_future():
  assert _earlier_outputs_change(causal=True) == []


def test_group_expert_choice_fails_the_same_check():
  # The test can fail: whole-group choice lets later tokens outbid earlier.
  assert len(_earlier_outputs_change(causal=False)) > 0


# --------------------------------------------------------------- config --


def test_decoder_refuses_noncausal_expert_choice():
  moe = MoEConfig(router='expert_choice', causal_routing=False)
  with pytest.raises(UserInputError, match='allow_noncausal=True'):
    ModelConfig(moe=moe)
  ModelConfig(moe=MoEConfig(router='expert_choice', causal_routing=False,
                            allow_noncausal=True))
  ModelConfig(moe=MoEConfig(router='expert_choice'))  # Causal: fine.


@pytest.mark.parametrize('kwargs,match', [
    (dict(dispatcher='dropless'), "use 'index', 'fused' or 'einsum'"),
    (dict(group_size=64), 'unset group_size'),
    (dict(causal_chunk=0), 'causal_chunk'),
    (dict(fixed_capacity=-1), 'fixed_capacity'),
])
def test_bad_expert_choice_config_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    MoEConfig(router='expert_choice', **kwargs)
  assert '\n' not in str(e.value)


def test_chunk_must_divide_the_sequence():
  with pytest.raises(UserInputError, match='divide the sequence'):
    ModelConfig(max_len=30, moe=MoEConfig(router='expert_choice'))


def test_capacity_conventions():
  cfg = MoEConfig(router='expert_choice', num_experts=4, capacity_factor=2.0,
                  min_capacity=1, causal_routing=False)
  assert cfg.capacity(16, train=True) == 8  # S·c/E, not scaled by top_k.
  causal = MoEConfig(router='expert_choice', num_experts=4,
                     capacity_factor=2.0, min_capacity=1, causal_chunk=8)
  assert causal.capacity(16, train=True) == 4  # Per chunk: Q·c/E.
  fixed = MoEConfig(num_experts=4, fixed_capacity=3)
  assert fixed.capacity(16, True) == fixed.capacity(16, False) == 3
  assert MoEConfig(num_experts=4, fixed_capacity=99).capacity(16, True) == 16


def test_moe_apply_returns_plan_and_logits():
  config = MoEConfig(router='expert_choice', num_experts=E, d_ff=8,
                     causal_chunk=4)
  params = moe_params(0, D, 8, E)
  x = jnp.ones((B, L, D))
  y, aux = moe_apply(params, x, config, return_routing=True)
  routing = aux.pop('routing')
  assert y.shape == x.shape and 'experts_per_token' in aux
  assert routing['plan'].shape == (B, L, E)
  assert routing['logits'].shape == (B, L, E)


def test_checkpoints_from_before_the_new_fields_stay_compatible():
  # A checkpoint saved before the zoo's fields existed resumes when they are
  # left at their defaults, and is refused when one is set.
  from moe_jax.config import default_config
  from moe_jax.train import saved_config
  current = default_config.get_default_config().to_dict()
  saved = default_config.get_default_config().to_dict()
  for name in ('fixed_capacity', 'causal_routing', 'allow_noncausal',
               'causal_chunk'):
    del saved['moe'][name]
  assert saved_config.config_differences(saved, current) == []
  current['moe']['causal_chunk'] = 8
  assert saved_config.config_differences(saved, current) == [
      "moe.causal_chunk: '<absent>' -> 8"]
