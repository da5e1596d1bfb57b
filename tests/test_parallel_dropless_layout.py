"""Dropless expert parallelism's per-device layouts, computed by hand.

The exchange itself runs on 8 devices in tests/_parallel_moe.py; these are
the pure index maps on either side of it.
"""

import jax.numpy as jnp
import numpy as np

from moe_jax.core.plan import DROPPED, RoutingPlan
from moe_jax.parallel.dropless_ep import destination_layout, received_plan


def test_destination_layout_sorts_choices_into_slots_by_expert():
  # 3 tokens x 2 choices over 4 experts on 2 devices (experts 0-1 | 2-3).
  # Choices t·K + k: 0->e0, 1->e3, 2->e2, 3->e1, 4->e1, 5->e0.
  plan = RoutingPlan(
      expert_index=jnp.asarray([[[0, 3], [2, 1], [1, 0]]], jnp.int32),
      combine_weights=jnp.ones((1, 3, 2)), slot=jnp.zeros((1, 3, 2), jnp.int32),
      num_experts=4, capacity=None)
  row, choice, counts = destination_layout(plan, num_devices=2)
  # Slot 0 (rows 0-5) holds device 0's experts: e0 (choices 0, 5), then e1
  # (3, 4); slot 1 (rows 6-11): e2 (choice 2), e3 (choice 1). 6 = empty.
  np.testing.assert_array_equal(counts, [[2, 2], [1, 1]])
  np.testing.assert_array_equal(choice, [0, 5, 3, 4, 6, 6, 2, 1, 6, 6, 6, 6])
  np.testing.assert_array_equal(row, [0, 7, 6, 2, 3, 1])


def test_destination_layout_skips_unrouted_choices():
  plan = RoutingPlan(
      expert_index=jnp.asarray([[[1, 2]]], jnp.int32),
      combine_weights=jnp.ones((1, 1, 2)),
      slot=jnp.asarray([[[0, DROPPED]]], jnp.int32), num_experts=4,
      capacity=None)
  row, choice, counts = destination_layout(plan, num_devices=2)
  np.testing.assert_array_equal(counts, [[0, 1], [0, 0]])
  np.testing.assert_array_equal(row, [0, 4])  # 4 = P·M: nowhere.
  np.testing.assert_array_equal(choice, [0, 2, 2, 2])


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
