"""Exchanging per-destination row buffers whose fill varies: one function,
two implementations.

Each device holds buffers [P, R, D], P = devices on the axis: slot p holds
the rows for device p, its first send_sizes[p] real and the rest 0. After
the exchange, slot s of device p holds what device s sent to p, in the same
[P, R, D] layout, so a round trip (sizes swapped) brings every row home to
the slot it left from.

  'ragged'  jax.lax.ragged_all_to_all: moves only the real rows. The GPU/TPU
            implementation; XLA:CPU cannot compile it ("HLO opcode
            ragged-all-to-all is not supported by XLA:CPU ThunkEmitter").
  'dense'   jax.lax.all_to_all of the whole buffers: moves all P·R rows,
            padding included. Correct everywhere; the CPU implementation.

Both return 0 in the rows past recv_sizes (the dense one because the
senders' padding is 0), so what runs after cannot tell them apart.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLS = ('ragged', 'dense')


def default_impl() -> str:
  """'dense' on CPU, which lacks ragged-all-to-all; 'ragged' elsewhere."""
  return 'dense' if jax.default_backend() == 'cpu' else 'ragged'


def exchange(buffers: jax.Array, send_sizes: jax.Array, recv_sizes: jax.Array,
             axis_name: str, impl: str | None = None) -> jax.Array:
  """Sends buffers[p, :send_sizes[p]] to device p, into its slot for us.

  Call inside shard_map, on every device of `axis_name`.

  Args:
    buffers: [P, R, D]; rows past send_sizes[p] in slot p must be 0.
    send_sizes: int32 [P] real rows per slot.
    recv_sizes: int32 [P] rows each device sends us (its send_sizes[me]);
      exchange the counts first.
    axis_name: the mesh axis of size P.
    impl: 'ragged', 'dense', or None for default_impl().

  Returns:
    [P, R, D]: slot s holds the rows device s sent, 0 past recv_sizes[s].
  """
  impl = impl or default_impl()
  if impl == 'dense':
    return jax.lax.all_to_all(buffers, axis_name, 0, 0, tiled=True)
  if impl != 'ragged':
    raise ValueError(f'exchange impl={impl!r}; use one of {IMPLS}.')
  p, r, d = buffers.shape
  flat = buffers.reshape(p * r, d)
  # Slot p starts at p·R here, and our rows land at me·R on every receiver.
  slot_start = jnp.arange(p, dtype=jnp.int32) * r
  me = jax.lax.axis_index(axis_name).astype(jnp.int32)
  out = jax.lax.ragged_all_to_all(
      flat, jnp.zeros_like(flat), slot_start, send_sizes.astype(jnp.int32),
      jnp.full((p,), me * r, jnp.int32), recv_sizes.astype(jnp.int32),
      axis_name=axis_name)
  return out.reshape(p, r, d)
