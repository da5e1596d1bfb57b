"""Giving arrays the manual mesh axes of others, for custom VJPs and loops
that run inside shard_map.

Inside shard_map every value carries the manual mesh axes it varies over
(tokens split over 'data' vary over it; replicated weights do not). A loop's
carry must keep its type, and a custom VJP must return cotangents of its
inputs' types, yet a cotangent varies over the axes of everything it was
computed from. Adding a zero derived from each other input gives an array
those axes too (XLA folds the additions away), and autodiff of that addition
sums the array's gradient over them, which is the correct transpose. Outside
shard_map there are no manual axes and all this is the identity.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _zero_like(like: jax.Array, dtype) -> jax.Array:
  """A scalar 0 of `dtype` that varies over the axes `like` varies over."""
  return jnp.zeros_like(like.reshape(-1)[0], dtype=dtype)


def zeros(shape, dtype, *likes) -> jax.Array:
  """Zeros that vary over the manual axes of every array in `likes`."""
  z = jnp.zeros(shape, dtype)
  for like in jax.tree.leaves(likes):
    z = z + _zero_like(like, dtype)
  return z


def vary_alike(*arrays):
  """Each array (or pytree of arrays), varying over the axes of all."""
  leaves = jax.tree.leaves(arrays)

  def widen(a):
    for like in leaves:
      if like is not a:
        a = a + _zero_like(like, a.dtype)
    return a

  return jax.tree.map(widen, arrays)
