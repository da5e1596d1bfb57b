"""Dropless expert parallelism's per-device layouts, computed by hand.

The exchange itself runs on 8 devices in tests/_parallel_moe.py; these are
the pure index maps on either side of it.
"""

import jax.numpy as jnp
import numpy as np

from moe_jax.core.plan import DROPPED, RoutingPlan
from moe_jax.parallel.dropless_ep import (destination_layout, received_plan,
                                          slot_rows)


def _six_choices():
  # 3 tokens x 2 choices over 4 experts on 2 devices (experts 0-1 | 2-3).
  # Choices t·K + k: 0->e0, 1->e3, 2->e2, 3->e1, 4->e1, 5->e0.
  return RoutingPlan(
      expert_index=jnp.asarray([[[0, 3], [2, 1], [1, 0]]], jnp.int32),
      combine_weights=jnp.ones((1, 3, 2)), slot=jnp.zeros((1, 3, 2), jnp.int32),
      num_experts=4, capacity=None)


def test_destination_layout_sorts_choices_into_slots_by_expert():
  plan = _six_choices()
  row, choice, counts, overflow = destination_layout(plan, num_devices=2)
  # Slot 0 (rows 0-5) holds device 0's experts: e0 (choices 0, 5), then e1
  # (3, 4); slot 1 (rows 6-11): e2 (choice 2), e3 (choice 1). 6 = empty.
  np.testing.assert_array_equal(counts, [[2, 2], [1, 1]])
  np.testing.assert_array_equal(choice, [0, 5, 3, 4, 6, 6, 2, 1, 6, 6, 6, 6])
  np.testing.assert_array_equal(row, [0, 7, 6, 2, 3, 1])
  assert overflow == 0  # Slots of M rows hold any routing.


def test_bounded_slots_keep_their_first_rows_and_count_the_rest():
  # M = 6 choices, P = 2: balanced is 3 per slot, so factor 1 gives R = 3.
  # Slot 0 wants e0 (choices 0, 5), e1 (3, 4): 4 rows, keeps 0, 5, 3 and
  # drops 4; slot 1 holds e2 (2), e3 (1) and one padding row.
  rows = slot_rows(6, 2, 1.0)
  assert rows == 3
  row, choice, counts, overflow = destination_layout(_six_choices(), 2, rows)
  np.testing.assert_array_equal(counts, [[2, 1], [1, 1]])  # Sent, not wanted.
  np.testing.assert_array_equal(choice, [0, 5, 3, 2, 1, 6])
  np.testing.assert_array_equal(row, [0, 4, 3, 2, 6, 1])  # 6 = P·R: dropped.
  assert overflow == 1


def test_slot_rows_scale_the_balanced_load_up_to_the_worst_case():
  assert slot_rows(32, 4, 1.25) == 10  # ceil(1.25 · 32 / 4)
  assert slot_rows(32, 4, None) == slot_rows(32, 4, 0) == 32
  assert slot_rows(32, 4, 4.0) == slot_rows(32, 4, 9.0) == 32  # f >= P.
  assert slot_rows(1, 8, 0.1) == 1


def test_destination_layout_skips_unrouted_choices():
  plan = RoutingPlan(
      expert_index=jnp.asarray([[[1, 2]]], jnp.int32),
      combine_weights=jnp.ones((1, 1, 2)),
      slot=jnp.asarray([[[0, DROPPED]]], jnp.int32), num_experts=4,
      capacity=None)
  row, choice, counts, overflow = destination_layout(plan, num_devices=2)
  np.testing.assert_array_equal(counts, [[0, 1], [0, 0]])
  np.testing.assert_array_equal(row, [0, 4])  # 4 = P·M: nowhere.
  np.testing.assert_array_equal(choice, [0, 2, 2, 2])
  assert overflow == 0  # Unrouted choices are not overflow.


def test_received_plan_reads_expert_ids_off_the_counts():
  # Source 0 sent 2 rows for local expert 0 and 1 for expert 1; source 1
  # sent 3 for expert 1. Slots of M = 4 rows; the rest is padding.
  plan = received_plan(jnp.asarray([[2, 1], [0, 3]], jnp.int32), slot_rows=4)
  assert plan.shape == (1, 8, 1) and plan.num_experts == 2
  kept = np.asarray(plan.kept).reshape(-1)
  np.testing.assert_array_equal(kept, [1, 1, 1, 0, 1, 1, 1, 0])
  np.testing.assert_array_equal(
      np.asarray(plan.expert_index).reshape(-1)[kept], [0, 0, 1, 1, 1, 1])
  np.testing.assert_array_equal(plan.combine_weights, np.ones((1, 8, 1)))
