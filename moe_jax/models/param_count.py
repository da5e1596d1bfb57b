"""Total and active (per-token) parameter counts."""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
from flax import nnx


def shapes_and_axes(params: nnx.State) -> list[tuple[tuple[int, ...], tuple]]:
  """(shape, logical axis names) of every parameter leaf."""
  specs = nnx.get_partition_spec(params)
  is_spec = lambda x: isinstance(x, jax.sharding.PartitionSpec)
  return [(tuple(leaf.shape), tuple(spec)) for leaf, spec in zip(
      jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=is_spec))]


def count_leaves(leaves: Iterable[tuple[Sequence[int], Sequence]],
                 top_k: float, num_experts: int) -> tuple[int, int]:
  """(total, active) over (shape, logical axes) pairs; see count_params."""
  total = active = 0
  for shape, axes in leaves:
    size = 1
    for dim in shape:
      size *= dim
    total += size
    is_expert = len(axes) > 0 and axes[0] == 'expert'
    active += int(size * top_k // num_experts) if is_expert else size
  return total, active


def count_params(params: nnx.State, top_k: float, num_experts: int):
  """Returns (total, active) parameter counts.

  Active counts what one token uses: each expert-stacked weight (first
  logical axis 'expert') contributes K/E of its size; all else counts fully.
  K may be fractional: MoEConfig.expert_passes_per_token gives it for the
  routers whose tokens use a varying number of experts.
  """
  return count_leaves(shapes_and_axes(params), top_k, num_experts)
