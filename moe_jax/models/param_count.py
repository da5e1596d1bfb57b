"""Total and active (per-token) parameter counts."""

from __future__ import annotations

import jax
from flax import nnx


def count_params(params: nnx.State, top_k: int, num_experts: int):
  """Returns (total, active) parameter counts.

  Active counts what one token uses: each expert-stacked weight (first
  logical axis 'expert') contributes K/E of its size; all else counts fully.
  """
  specs = nnx.get_partition_spec(params)
  total = active = 0
  for leaf, spec in zip(jax.tree.leaves(params), jax.tree.leaves(
      specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))):
    total += leaf.size
    is_expert = len(spec) > 0 and spec[0] == 'expert'
    active += leaf.size * top_k // num_experts if is_expert else leaf.size
  return total, active
