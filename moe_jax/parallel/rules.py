"""The one table that maps logical axis names to mesh axes.

Parameters carry logical names ('embed', 'mlp', 'expert', ...) from the
modules that create them; activations use 'batch'. Nothing else in the code
names a mesh axis for a parameter.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

Rules = Sequence[tuple[str, Any]]

DEFAULT_RULES: Rules = (
    ('batch', ('data', 'expert')),  # Tokens split over data and expert.
    ('expert', 'expert'),  # Each device holds E / EP experts.
    ('mlp', 'model'),  # FFN hidden width: tensor parallel.
    ('heads', 'model'),  # Attention heads: tensor parallel.
    ('embed', None),  # Replicated.
    ('kv', None),
    ('vocab', None),
)


def logical_to_spec(axes: Sequence[str | None], rules: Rules = DEFAULT_RULES,
                    mesh=None) -> P:
  """('expert', 'embed', 'mlp') -> P('expert', None, 'model').

  Mesh axes the mesh does not have, or of size 1, are dropped so the same
  rules serve every mesh.
  """
  table = dict(rules)
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes)) if mesh else None

  def keep(mesh_axis):
    return mesh_axis is not None and (sizes is None or sizes.get(mesh_axis, 1) > 1)

  out = []
  for name in axes:
    target = table.get(name) if name is not None else None
    if isinstance(target, (tuple, list)):
      kept = tuple(a for a in target if keep(a))
      out.append(kept if len(kept) > 1 else (kept[0] if kept else None))
    else:
      out.append(target if keep(target) else None)
  return P(*out)


def tree_shardings(abstract_tree, mesh, rules: Rules = DEFAULT_RULES):
  """NamedShardings for every leaf of a tree holding nnx Variables.

  Leaves with logical annotations follow the rules; all others (step
  counters, keys, scalars) are replicated.
  """
  specs = nnx.get_partition_spec(abstract_tree)

  def to_sharding(spec):
    if isinstance(spec, P) and spec and all(
        isinstance(a, str) or a is None for a in spec):
      return NamedSharding(mesh, logical_to_spec(tuple(spec), rules, mesh))
    return NamedSharding(mesh, P())

  return jax.tree.map(to_sharding, specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh, rank: int, rules: Rules = DEFAULT_RULES):
  """Sharding of a [B, ...] batch array: B over the batch axes."""
  return NamedSharding(mesh, logical_to_spec(('batch',) + (None,) * (rank - 1),
                                             rules, mesh))
