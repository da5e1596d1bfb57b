"""Tests for moe_jax.core.capacity: expert capacity and slot assignment."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.core.capacity import assign_slots, expert_capacity
from moe_jax.core.plan import DROPPED
from moe_jax.errors import UserInputError

# ---------------------------------------------------------------- capacity


def test_per_choice_convention_scales_with_k():
  # ceil(K·S·cf/E): 2·10·1.25/4 = 6.25 -> 7; K=1: 3.125 -> 4 (ceil, not
  # round).
  assert expert_capacity(10, 4, 2, 1.25) == 7
  assert expert_capacity(10, 4, 1, 1.25) == 4
  assert expert_capacity(10, 4, 2, 1.25, scale_with_k=True) == 7


def test_switch_convention_rounds_and_ignores_k():
  # round(S·cf/E): 10·1.25/4 = 3.125 -> 3 for any K (ceil would give 4).
  assert expert_capacity(10, 4, 1, 1.25, scale_with_k=False) == 3
  assert expert_capacity(10, 4, 2, 1.25, scale_with_k=False) == 3
  # 10·1.5/4 = 3.75 -> 4 (floor would give 3).
  assert expert_capacity(10, 4, 1, 1.5, scale_with_k=False) == 4


def test_min_capacity_raises_small_capacities():
  # ceil(1·8·0.5/8) = 1, lifted to min_capacity.
  assert expert_capacity(8, 8, 1, 0.5, min_capacity=1) == 1
  assert expert_capacity(8, 8, 1, 0.5, min_capacity=4) == 4
  # Switch convention can round to 0; capacity is never below 1.
  assert expert_capacity(8, 8, 1, 0.25, min_capacity=1,
                         scale_with_k=False) == 1


def test_capacity_is_clamped_to_group_size():
  # ceil(2·4·4.0/2) = 16 but an expert never gets more than S choices.
  assert expert_capacity(4, 2, 2, 4.0) == 4
  # The clamp to S wins over min_capacity.
  assert expert_capacity(3, 4, 1, 1.0, min_capacity=8) == 3


@pytest.mark.parametrize('cf', [0.0, -1.0, float('nan')])
@pytest.mark.parametrize('scale_with_k', [True, False])
def test_non_positive_capacity_factor_raises(cf, scale_with_k):
  with pytest.raises(UserInputError, match='capacity_factor') as info:
    expert_capacity(10, 4, 1, cf, scale_with_k=scale_with_k)
  # Callers that only know ValueError must still catch it.
  assert isinstance(info.value, ValueError)


# ------------------------------------------------------------ assign_slots

# One group, S=4 tokens, K=2 choices, E=3 experts. Column k is choice k.
_EXPERTS = np.array([[[0, 1],
                      [1, 0],
                      [0, 2],
                      [0, 1]]], np.int32)
_ALL_ROUTED = np.ones(_EXPERTS.shape, bool)


# Jitted (one compile per shape beats eager op-by-op dispatch on CPU) and
# unoptimised, since XLA's optimisations cost more than they save here.
_assign_slots = jax.jit(
    assign_slots, static_argnums=(2, 3),
    compiler_options={'xla_backend_optimization_level': 0})


def _slots(expert_index, routed, capacity, num_experts=3):
  return np.asarray(_assign_slots(jnp.asarray(expert_index),
                                  jnp.asarray(routed), num_experts, capacity))


def test_assign_slots_rank_major_priority_and_drops():
  # Rank 0 in sequence order: t0->e0 s0, t1->e1 s0, t2->e0 s1, t3->e0 full.
  # Rank 1: t0->e1 s1, t1->e0 full (t1's second choice lost to the LATER t2's
  # first choice), t2->e2 s0, t3->e1 full.
  want = [[[0, 1],
           [0, DROPPED],
           [1, 0],
           [DROPPED, DROPPED]]]
  got = _slots(_EXPERTS, _ALL_ROUTED, capacity=2)
  np.testing.assert_array_equal(got, want)
  assert got.dtype == np.int32


def test_assign_slots_without_capacity_never_drops():
  # Same order, no limit: e0 gets t0, t2, t3 (rank 0) then t1 (rank 1).
  want = [[[0, 1],
           [0, 3],
           [1, 0],
           [2, 2]]]
  np.testing.assert_array_equal(_slots(_EXPERTS, _ALL_ROUTED, None), want)


def test_assign_slots_large_capacity_matches_no_capacity():
  np.testing.assert_array_equal(
      _slots(_EXPERTS, _ALL_ROUTED, capacity=4),
      _slots(_EXPERTS, _ALL_ROUTED, capacity=None))


def test_unrouted_choices_take_no_capacity():
  routed = _ALL_ROUTED.copy()
  routed[0, 0, 1] = False  # t0 does not send its second choice (e1).
  # e1 rank 1 now only has t3, which takes slot 1 instead of being dropped;
  # t0's second choice is DROPPED although its expert had room.
  want = [[[0, DROPPED],
           [0, DROPPED],
           [1, 0],
           [DROPPED, 1]]]
  np.testing.assert_array_equal(_slots(_EXPERTS, routed, capacity=2), want)
  # Unrouted stays unrouted without a capacity too.
  no_cap = _slots(_EXPERTS, routed, capacity=None)
  assert no_cap[0, 0, 1] == DROPPED
  assert no_cap[0, 3, 1] == 1


def test_groups_have_independent_capacity():
  # Group 1 sends everything to e0; group 0 is the case above. Each group's
  # buffers start empty, so group 0 is unaffected.
  group1 = np.array([[[0, 1], [0, 2], [0, 1], [0, 2]]], np.int32)
  experts = np.concatenate([_EXPERTS, group1], axis=0)
  routed = np.ones(experts.shape, bool)
  got = _slots(experts, routed, capacity=2)
  np.testing.assert_array_equal(got[:1], _slots(_EXPERTS, _ALL_ROUTED, 2))
  np.testing.assert_array_equal(
      got[1], [[0, 0], [1, 0], [DROPPED, 1], [DROPPED, 1]])


def test_top1_sequence_order():
  experts = np.array([[[2], [2], [1], [2], [2]]], np.int32)
  routed = np.ones(experts.shape, bool)
  got = _slots(experts, routed, capacity=2)
  np.testing.assert_array_equal(got[..., 0], [[0, 1, 0, DROPPED, DROPPED]])


def _one_hot_slots(expert_index, routed, num_experts, capacity):
  """The O(S·K·E) reference: a running count over one-hot choices."""
  g, s, k = expert_index.shape
  onehot = np.eye(num_experts, dtype=np.int64)[expert_index] * routed[..., None]
  rank_major = onehot.transpose(0, 2, 1, 3).reshape(g, k * s, num_experts)
  position = (np.cumsum(rank_major, axis=1) - 1).reshape(
      g, k, s, num_experts).transpose(0, 2, 1, 3)
  slot = np.sum(position * onehot, axis=-1)
  kept = routed & (slot < capacity)
  return np.where(kept, slot, DROPPED)


@pytest.mark.parametrize('packed', [True, False])
def test_sorted_slots_match_one_hot_count(packed, monkeypatch):
  """The sort (packed key, or the pair sort used past int32) equals the
  running one-hot count, with distinct top-k experts, unrouted choices and
  drops."""
  from moe_jax.core import capacity as capacity_lib
  if not packed:
    monkeypatch.setattr(capacity_lib, '_PACKED_KEY_LIMIT', 0)
  rng = np.random.default_rng(0)
  g, s, k, e = 3, 40, 4, 16
  expert_index = np.argsort(rng.normal(size=(g, s, e)), axis=-1)[..., :k]
  routed = rng.random((g, s, k)) < 0.8
  want = _one_hot_slots(expert_index, routed, e, capacity=9)
  got = assign_slots(jnp.asarray(expert_index), jnp.asarray(routed), e, 9)
  np.testing.assert_array_equal(np.asarray(got), want)
  assert np.any(want == DROPPED) and np.any(want == 8)
