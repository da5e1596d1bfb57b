"""Using weights that fully sharded data parallelism splits over 'data'.

With `mesh.fsdp=True` (rules.FSDP_RULES) every weight is stored split over
the data axis on its D dim. Under jit the partitioner gathers a weight
where a matmul uses it and sends its gradient back onto the shards. Two
places need help:

  whole_over_data   a lookup into a D-split embedding table: without it the
                    partitioner gathers every device's tokens instead and
                    looks up a slice of D for all of them (activations of
                    the global batch on each device, both ways).
  gather_data       inside the experts' shard_map, where the collectives
                    are ours: an explicit all-gather, whose transpose is the
                    reduce-scatter of the gradient.

Both do nothing under DEFAULT_RULES or without a mesh, so the programs and
numbers of a run without FSDP are unchanged.
"""

from __future__ import annotations

from typing import Sequence

import jax

from moe_jax.parallel import rules as rules_lib

DATA_AXIS = 'data'


def whole_over_data(value: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`value`, a parameter with logical `axes`, gathered over 'data'.

  A sharding constraint to the weight's DEFAULT_RULES placement; its
  transpose puts the gradient back the same way. Traced under FSDP_RULES
  (rules.active()) with a mesh set; otherwise `value` itself.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if rules_lib.active() is rules_lib.DEFAULT_RULES or not mesh.axis_names:
    return value
  return jax.lax.with_sharding_constraint(
      value, rules_lib.logical_to_spec(axes, rules_lib.DEFAULT_RULES, mesh))


def gather_data(w: jax.Array, spec) -> jax.Array:
  """Inside shard_map: the whole of each dim of `w` that `spec` splits over
  'data' (the weight's in_spec; FSDP_RULES split D).

  An explicit all-gather rather than the one shard_map would insert before
  its body, because its transpose is a reduce-scatter: each device's
  gradient of the gathered weight, a partial sum over its own tokens, is
  summed and split back onto the shards in one collective. Gathered outside,
  the full gradient would be all-reduced onto every device and then sliced.
  """
  for dim, axes in enumerate(spec):
    if axes == DATA_AXIS:
      w = jax.lax.all_gather(w, DATA_AXIS, axis=dim, tiled=True)
    elif isinstance(axes, tuple) and DATA_AXIS in axes:
      # A guard on FSDP_RULES, not a case a config can reach: no rule set
      # splits one weight dim over data and another axis. A rule set that
      # does must gather over both axes here, in the order of `axes`.
      raise NotImplementedError(f'{spec}: a weight dim split over data and '
                                'another axis.')
  return w
