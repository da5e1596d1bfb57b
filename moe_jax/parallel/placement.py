"""Placing train state and batches on a mesh.

State shardings come from the parameters' logical axis names through the
rules table; the optimizer state inherits them because optax maps over the
annotated parameter tree. Batches are sharded over the batch axes.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from moe_jax.parallel import rules as rules_lib


def init_sharded(init_fn: Callable[[], Any], mesh, rules=rules_lib.DEFAULT_RULES):
  """Runs `init_fn` jitted so every array is created directly in its shard.

  Returns:
    (state, shardings): the state and the tree of NamedShardings it has.
  """
  with jax.set_mesh(mesh):
    abstract = jax.eval_shape(init_fn)
    shardings = rules_lib.tree_shardings(abstract, mesh, rules)
    return jax.jit(init_fn, out_shardings=shardings)(), shardings


def abstract_with_shardings(state, shardings):
  """ShapeDtypeStructs carrying the target shardings (for orbax restore)."""
  return jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      state, shardings)


def batch_shardings(mesh, batch: dict[str, np.ndarray],
                    rules=rules_lib.DEFAULT_RULES) -> dict[str, NamedSharding]:
  return {k: rules_lib.batch_sharding(mesh, v.ndim, rules)
          for k, v in batch.items()}


def shard_batch(batch: dict[str, np.ndarray],
                shardings: dict[str, NamedSharding]) -> dict[str, jax.Array]:
  """Global host batch -> global jax.Arrays sharded over the batch axes.

  Every process builds the same global batch (it is a pure function of the
  seed and step) and hands each of its devices only that device's rows, so
  the same code is right for one process or many.
  """
  return {k: jax.make_array_from_callback(v.shape, shardings[k],
                                          lambda index, v=v: v[index])
          for k, v in batch.items()}


def device_bytes(tree) -> int:
  """The most bytes any one device holds of `tree`'s arrays of rank >= 1,
  read from their shards (the scalars, such as Adam's step count, are
  left out: replicated and negligible)."""
  per_device = {}
  for leaf in jax.tree.leaves(tree):
    if leaf.ndim:
      for shard in leaf.addressable_shards:
        per_device[shard.device] = (per_device.get(shard.device, 0) +
                                    shard.data.nbytes)
  return max(per_device.values())


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())
