"""The tables that map logical axis names to mesh axes.

Parameters carry logical names ('embed', 'mlp', 'expert', ...) from the
modules that create them; activations use 'batch'. Nothing else in the code
names a mesh axis for a parameter. A run uses DEFAULT_RULES, or FSDP_RULES
with `mesh.fsdp=True` (for_config).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from typing import Any, Callable, Sequence

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

# Fully sharded data parallelism (ZeRO-3): DEFAULT_RULES with the model
# width D split over 'data' too. Every weight matrix (experts' included, on
# their D dim beside E over 'expert' and F over 'model') has a D dim, so
# each device keeps 1/data of the weights and, as optax maps over the same
# tree, of both Adam moments. Under jit the partitioner gathers a weight
# where a layer uses it and reduces its gradient back onto the shards; the
# experts' shard_map gathers its own (expert_parallel.run_experts).
# Activations never use 'embed' (only 'batch'), so tokens stay split over
# data × expert as before. The few parameters without a D dim (Qwen's
# attention biases [H, K]) stay replicated; they are tiny.
FSDP_RULES: Rules = tuple(
    (name, 'data' if name == 'embed' else target)
    for name, target in DEFAULT_RULES)


def for_config(config) -> Rules:
  """The rule set of an experiment config: FSDP_RULES when mesh.fsdp."""
  return FSDP_RULES if config.mesh.fsdp else DEFAULT_RULES


# The rule set the parameters of the function being traced are placed by,
# for code that must know it inside jit, where Auto-axis arrays do not say
# how they are sharded: the experts' shard_map (expert_parallel.py) gathers
# data-split weights itself. Getting it wrong costs speed, never results:
# shard_map reshards whatever arrives to the specs it is given.
_TRACING = threading.local()


def active() -> Rules:
  """The rule set of the function being traced (see traced_with)."""
  return getattr(_TRACING, 'rules', DEFAULT_RULES)


@contextlib.contextmanager
def _using(rules: Rules):
  previous = active()
  _TRACING.rules = rules
  try:
    yield
  finally:
    _TRACING.rules = previous


def traced_with(rules: Rules, fn: Callable) -> Callable:
  """`fn`, traced with active() = rules (wrap it before jax.jit)."""
  @functools.wraps(fn)  # jit reads fn's signature through it.
  def wrapped(*args, **kwargs):
    with _using(rules):
      return fn(*args, **kwargs)
  # The name jit gives the program (a partial's is its function's).
  wrapped.__name__ = getattr(getattr(fn, 'func', fn), '__name__', 'traced')
  return wrapped


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
