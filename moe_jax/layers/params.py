"""Parameter creation shared by every module: init and logical axis names."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx


def scaled_init(scale: float, batch_axes: tuple[int, ...] = ()):
  """Truncated-normal fan-in init with variance scale/fan_in.

  The last two axes are (fan_in, fan_out) unless the caller's kernel is laid
  out otherwise. A leading expert axis is a batch axis, so each expert is
  initialised like a dense layer of its own.
  """
  return nnx.initializers.variance_scaling(
      scale, 'fan_in', 'truncated_normal', in_axis=-2, out_axis=-1,
      batch_axis=batch_axes)


def param(rngs: nnx.Rngs, init, shape, axes, dtype=jnp.float32) -> nnx.Param:
  """A parameter annotated with logical axis names, created without a mesh.

  eager_sharding=False keeps creation mesh-free (single-device code and
  tests need no mesh); the parallel code reads the annotations and places
  the parameters itself, from one table of logical-to-mesh rules.
  """
  return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes,
                   eager_sharding=False)
