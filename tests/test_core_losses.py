"""Tests for moe_jax.core.losses and moe_jax.core.metrics on hand values."""

import functools

import jax
import numpy as np
import pytest

from moe_jax.core import losses
from moe_jax.core import metrics

# Jitted once per shape (cheaper on CPU than eager op-by-op dispatch) and
# unoptimised, since XLA's optimisations cost more than they save here.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})
_balance = _jit(losses.load_balance_loss)
_z = _jit(losses.z_loss)
_metrics = _jit(metrics.routing_metrics)

_E = 4


def _uniform_probs(t, e=_E):
  return np.full((t, e), 1.0 / e, np.float32)


def _collapsed_probs(t, e=_E):
  probs = np.zeros((t, e), np.float32)
  probs[:, 0] = 1.0
  return probs


# -------------------------------------------------------- load balancing


def test_balance_is_one_at_uniform_routing_top1():
  expert_index = (np.arange(8) % _E).reshape(8, 1)  # 2 tokens per expert.
  np.testing.assert_allclose(_balance(_uniform_probs(8), expert_index), 1.0,
                             rtol=1e-6)


def test_balance_is_one_at_uniform_routing_top2():
  # Every expert appears in exactly 2 of the 8 choices; f_e = 1/4 after
  # dividing the counts by K, so the value stays 1 (not K).
  expert_index = np.array([[0, 1], [2, 3], [1, 2], [3, 0]])
  np.testing.assert_allclose(_balance(_uniform_probs(4), expert_index), 1.0,
                             rtol=1e-6)


def test_balance_is_num_experts_at_full_collapse_top1():
  expert_index = np.zeros((8, 1), np.int32)
  np.testing.assert_allclose(_balance(_collapsed_probs(8), expert_index),
                             float(_E), rtol=1e-6)


def test_balance_is_num_experts_at_full_collapse_top2():
  # Hand-built collapse: all probability and every choice on e0.
  expert_index = np.zeros((8, 2), np.int32)
  np.testing.assert_allclose(_balance(_collapsed_probs(8), expert_index),
                             float(_E), rtol=1e-6)
  # A real top-2 router must pick 2 distinct experts, so f_e <= 1/K and the
  # largest reachable value is E/K: here e0 and e1 each get half the choices.
  distinct = np.tile(np.array([[0, 1]]), (8, 1))
  np.testing.assert_allclose(_balance(_collapsed_probs(8), distinct),
                             _E / 2, rtol=1e-6)


def test_balance_asymmetric_hand_values():
  # K=1, E=2: f = [3/4, 1/4], P = [2.6/4, 1.4/4] = [0.65, 0.35];
  # 2·(0.75·0.65 + 0.25·0.35) = 1.15.
  probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]],
                   np.float32)
  np.testing.assert_allclose(_balance(probs, np.array([[0], [0], [1], [0]])),
                             1.15, rtol=1e-6)
  # K=2, E=3: counts [1, 2, 1]/4, P = [0.3, 0.45, 0.25];
  # 3·(0.25·0.3 + 0.5·0.45 + 0.25·0.25) = 1.0875.
  probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], np.float32)
  np.testing.assert_allclose(_balance(probs, np.array([[0, 1], [1, 2]])),
                             1.0875, rtol=1e-6)


def test_balance_pools_over_leading_axes():
  # [G, S, E] gives the same value as the flattened [G·S, E].
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.ones(_E), size=(2, 3)).astype(np.float32)
  expert_index = rng.integers(0, _E, size=(2, 3, 2))
  np.testing.assert_allclose(
      _balance(probs, expert_index),
      _balance(probs.reshape(6, _E), expert_index.reshape(6, 2)), rtol=1e-6)


# ---------------------------------------------------------------- z-loss


def test_z_loss_of_zero_logits_is_log_e_squared():
  np.testing.assert_allclose(_z(np.zeros((2, 3, _E), np.float32)),
                             np.log(_E)**2, rtol=1e-6)


def test_z_loss_hand_values_and_large_logits():
  logits = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 5.0]])
  lse = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(_z(logits.astype(np.float32)), np.mean(lse**2),
                             rtol=1e-6)
  # exp(100) overflows float32; a stable logsumexp gives 100 + log 2.
  big = np.full((1, 2), 100.0, np.float32)
  np.testing.assert_allclose(_z(big), (100.0 + np.log(2.0))**2, rtol=1e-6)


# --------------------------------------------------------------- metrics

# G=1, S=4, K=2, E=5 (e4 never chosen).
_PROBS = np.array([[[0.4, 0.3, 0.1, 0.1, 0.1],
                    [0.5, 0.1, 0.3, 0.05, 0.05],
                    [0.6, 0.2, 0.1, 0.05, 0.05],
                    [0.3, 0.1, 0.1, 0.5, 0.0]]], np.float32)
_EXPERTS = np.array([[[0, 1], [0, 2], [0, 1], [3, 0]]], np.int32)
# t2's second choice was skipped by the policy (not routed, not dropped).
_ROUTED = np.array([[[1, 1], [1, 1], [1, 0], [1, 1]]], bool)
# t2's first choice, t1's and t3's second choices were over capacity; t2
# reaches no expert at all.
_KEPT = np.array([[[1, 1], [1, 0], [0, 0], [1, 0]]], bool)


@pytest.fixture(scope='module')
def hand_metrics():
  return {k: np.asarray(v) for k, v in
          _metrics(_PROBS, _EXPERTS, _ROUTED, _KEPT).items()}


def test_metrics_expert_fraction(hand_metrics):
  # Routed choices per expert (before capacity): e0 4, e1 1, e2 1, e3 1.
  np.testing.assert_allclose(hand_metrics['expert_fraction'],
                             np.array([4, 1, 1, 1, 0]) / 7, rtol=1e-6)


def test_metrics_drops(hand_metrics):
  # Rank 0: t2 dropped of 4 tokens; rank 1: t1 and t3 (t2 was not routed).
  np.testing.assert_allclose(hand_metrics['dropped_fraction'], [0.25, 0.5])
  np.testing.assert_allclose(hand_metrics['unrouted_fraction'], 0.25)


def test_metrics_confidence(hand_metrics):
  p = _PROBS[0].astype(np.float64)
  plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
  np.testing.assert_allclose(hand_metrics['router_entropy'],
                             -plogp.sum(-1).mean(), rtol=1e-6)
  np.testing.assert_allclose(hand_metrics['top_gate'],
                             np.mean([0.4, 0.5, 0.6, 0.5]), rtol=1e-6)


def test_metrics_load_violation_and_dead_experts(hand_metrics):
  # max load 4 over mean load 7/5: 20/7 - 1 = 13/7.
  np.testing.assert_allclose(hand_metrics['max_violation'], 13 / 7,
                             rtol=1e-6)
  np.testing.assert_allclose(hand_metrics['dead_expert_fraction'], 0.2)


def test_metrics_at_balance():
  # One choice per expert: MaxVio 0, no dead experts, uniform fractions.
  probs = np.full((1, 4, 4), 0.25, np.float32)
  experts = np.arange(4, dtype=np.int32).reshape(1, 4, 1)
  ones = np.ones((1, 4, 1), bool)
  m = _metrics(probs, experts, ones, ones)
  np.testing.assert_allclose(m['max_violation'], 0.0, atol=1e-6)
  np.testing.assert_allclose(m['dead_expert_fraction'], 0.0)
  np.testing.assert_allclose(m['expert_fraction'], [0.25] * 4, rtol=1e-6)
  np.testing.assert_allclose(m['router_entropy'], np.log(4), rtol=1e-6)
  np.testing.assert_allclose(m['dropped_fraction'], [0.0])
  np.testing.assert_allclose(m['unrouted_fraction'], 0.0)
