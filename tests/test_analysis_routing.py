"""Routing analyses on hand-built traces whose answers are known."""

import dataclasses
import math

import numpy as np
import pytest

from moe_jax.analysis import drops, dynamics, routing
from moe_jax.analysis.handmade import trace_from_arrays


def test_load_and_imbalance():
  # 3 of 4 choices go to expert 0: load [0.75, 0.25], mean 0.5.
  t = trace_from_arrays(np.array([[0], [0], [0], [1]]), num_experts=2)
  r = routing.expert_load(t)
  np.testing.assert_allclose(r['load'], [[0.75, 0.25]])
  np.testing.assert_allclose(r['max_violation'], [0.5])
  np.testing.assert_allclose(r['cv'], [0.5])
  # Full collapse onto one of E experts is MaxVio = E - 1.
  t = trace_from_arrays(np.zeros((5, 1)), num_experts=4)
  np.testing.assert_allclose(routing.expert_load(t)['max_violation'], [3.0])


def test_load_counts_the_chosen_ranks():
  t = trace_from_arrays(np.array([[0, 1], [0, 2]]), num_experts=4)
  np.testing.assert_allclose(routing.expert_load(t)['load'],
                             [[0.5, 0.25, 0.25, 0]])
  np.testing.assert_allclose(routing.expert_load(t, ranks=(1,))['load'],
                             [[0, 0.5, 0.5, 0]])


def test_byte_classes():
  names = [routing.BYTE_CLASSES[c]
           for c in routing.byte_class(np.frombuffer(b'a7 (.\x80\n', np.uint8))]
  assert names == ['letter', 'digit', 'whitespace', 'bracket', 'punctuation',
                   'other', 'whitespace']


def test_expert_label_counts_and_top_tokens():
  tokens = np.array([97, 97, 98, 32, 32, 32])
  expert = np.array([[0], [0], [0], [1], [1], [0]])
  t = trace_from_arrays(expert, num_experts=2, tokens=tokens)
  counts = routing.expert_label_counts(t, routing.byte_class(tokens),
                                       len(routing.BYTE_CLASSES))
  letter, space = (routing.BYTE_CLASSES.index(n)
                   for n in ('letter', 'whitespace'))
  assert counts[0, 0, letter] == 3 and counts[0, 0, space] == 1
  assert counts[0, 1, space] == 2 and counts.sum() == 6
  top = routing.top_tokens(t, layer=0, n=3)
  np.testing.assert_array_equal(top['tokens'][0], [97, 32, 98])
  np.testing.assert_array_equal(top['counts'][0], [2, 1, 1])
  np.testing.assert_allclose(top['share'][0], [1.0, 1 / 3, 1.0])
  np.testing.assert_array_equal(top['tokens'][1], [32, -1, -1])


def test_perfect_specialisation_has_mi_equal_to_the_domain_entropy():
  rng = np.random.default_rng(0)
  domain = rng.choice(3, size=5000, p=[0.5, 0.3, 0.2])
  # Each domain has its own expert (a permutation; expert 3 is unused).
  expert = np.array([2, 0, 3])[domain]
  t = trace_from_arrays(expert[:, None], num_experts=4, domain=domain)
  r = routing.expert_label_mi(t, t.domain)
  h_domain = routing.entropy(np.bincount(domain))
  np.testing.assert_allclose(h_domain, -sum(
      p * math.log(p) for p in np.bincount(domain) / 5000))
  np.testing.assert_allclose(r['mi'], [h_domain], rtol=1e-12)
  np.testing.assert_allclose(r['nmi'], [1.0])
  assert r['nmi_shuffled'][0] < 0.01


def test_independent_routing_has_mi_near_the_shuffled_floor():
  rng = np.random.default_rng(1)
  domain = rng.integers(0, 4, 20000)
  expert = rng.integers(0, 8, 20000)
  t = trace_from_arrays(expert[:, None], num_experts=8, domain=domain)
  r = routing.expert_label_mi(t, t.domain)
  assert r['nmi'][0] < 0.01
  assert abs(r['nmi'][0] - r['nmi_shuffled'][0]) < 0.005


def test_expert_as_a_function_of_the_token_has_nmi_one():
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, 256, 10000)
  t = trace_from_arrays((tokens % 8)[:, None], num_experts=8, tokens=tokens)
  np.testing.assert_allclose(routing.expert_label_mi(t, t.tokens)['nmi'],
                             [1.0])


def test_uniform_random_routing_reuses_at_the_chance_rate():
  rng = np.random.default_rng(3)
  n, e = 200_000, 8
  expert = rng.integers(0, e, (n, 1))
  t = trace_from_arrays(expert, num_experts=e, seq_len=100)
  r = dynamics.reuse_rate(t, 'first')
  assert r['pairs'] == n - n // 100  # No pair crosses a sequence boundary.
  assert r['uniform'] == 1 / 8
  sigma = math.sqrt(1 / 8 * 7 / 8 / r['pairs'])
  assert abs(r['rate'][0] - 1 / 8) < 4 * sigma
  assert abs(r['chance'][0] - 1 / 8) < 1e-3


def test_uniform_random_top2_overlaps_at_the_chance_rate():
  rng = np.random.default_rng(4)
  n, e = 100_000, 8
  expert = np.argsort(rng.random((n, e)), axis=1)[:, :2]  # Distinct pairs.
  t = trace_from_arrays(expert, num_experts=e, seq_len=50)
  r = dynamics.reuse_rate(t, 'any')
  expected = 1 - 15 / 28  # 1 - C(6,2)/C(8,2)
  assert r['uniform'] == pytest.approx(expected)
  assert abs(r['chance'][0] - expected) < 2e-3
  sigma = math.sqrt(expected * (1 - expected) / r['pairs'])
  assert abs(r['rate'][0] - expected) < 4 * sigma


def test_reuse_is_one_when_each_sequence_keeps_its_expert():
  # Sequences of 4 tokens, each sequence on one expert: every in-sequence
  # pair reuses, and the chance rate stays near 1/E.
  expert = np.repeat(np.arange(8), 4)[:, None]
  t = trace_from_arrays(expert, num_experts=8, seq_len=4)
  r = dynamics.reuse_rate(t)
  assert r['pairs'] == 8 * 3
  np.testing.assert_allclose(r['rate'], [1.0])
  np.testing.assert_allclose(r['chance'], [1 / 8])


def test_transition_counts():
  rng = np.random.default_rng(5)
  first = rng.integers(0, 4, 1000)
  expert = np.stack([first, (first + 1) % 4])[..., None]  # [M=2, N, K=1]
  t = trace_from_arrays(expert, num_experts=4)
  counts = dynamics.transition_counts(t)
  assert counts.shape == (1, 4, 4)
  np.testing.assert_array_equal(
      counts[0], np.diag(np.bincount(first, minlength=4)) @ np.roll(
          np.eye(4, dtype=int), 1, axis=1))


def test_a_known_drop_pattern_is_attributed_correctly():
  # Groups of 8 tokens, top-2 over 4 experts. Second choices go to expert 2
  # and drop from group position 5 on; nothing else drops.
  n, s = 64, 8
  pos = np.arange(n) % s
  expert = np.stack([np.arange(n) % 2, np.full(n, 2)], axis=1)
  dropped = np.stack([np.zeros(n, bool), pos >= 5], axis=1)
  t = trace_from_arrays(expert, num_experts=4, group_size=s, seq_len=16,
                        dropped=dropped)
  by_expert = drops.drops_by_expert(t)
  np.testing.assert_array_equal(by_expert['routed'], [[32, 32, 64, 0]])
  np.testing.assert_array_equal(by_expert['dropped'], [[0, 0, 24, 0]])
  np.testing.assert_allclose(by_expert['rate'], [[0, 0, 24 / 64, 0]])
  np.testing.assert_allclose(by_expert['share'], [[0, 0, 1, 0]])
  np.testing.assert_allclose(drops.drops_by_rank(t), [[0, 24 / 64]])
  by_pos = drops.drops_by_group_position(t)
  assert by_pos.shape == (1, 2, s)
  np.testing.assert_array_equal(by_pos[0, 0], 0)
  np.testing.assert_array_equal(by_pos[0, 1], [0, 0, 0, 0, 0, 1, 1, 1])
  assert np.array_equal(t.gate[t.dropped], np.zeros(24))


def test_loss_by_drop():
  t = trace_from_arrays(np.zeros((4, 1)), num_experts=2,
                        dropped=np.array([[1], [0], [0], [1]]))
  t = dataclasses.replace(t, loss=np.array([3., 1., 1., 5.], np.float32))
  r = drops.loss_by_drop(t)
  np.testing.assert_allclose(r['dropped'], [4.0])
  np.testing.assert_allclose(r['kept'], [1.0])
  np.testing.assert_array_equal(r['count_dropped'], [2])
