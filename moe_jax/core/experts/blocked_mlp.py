"""Running an expert MLP over the blocked layout, tile by tile.

The blocked dropless layout (dispatch/dropless_blocked.py) gives rows
[NB, blk, D] sorted by expert, each block of blk rows one expert's. This
module runs an MLP, split into halves pre(p, x) -> h and post(p, h) -> y, over
those rows: runs of one expert's blocks go in tiles of TILE_ROWS rows, each
tile plain matmuls against that expert's weights, inside a fori_loop whose
trip count is the number of tiles in use. A custom VJP keeps the backward
pass to the same loop, with the weight gradients summed in place.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.core.experts import manual_axes
from moe_jax.core.dispatch.base import ExpertInputs
from moe_jax.core.plan import segment_of


# Heights in rows of the tiles the blocked layout runs in, biggest first;
# what no tile covers runs block by block (see block_schedule). Halving
# down to 16 cuts each expert's rows into at most one tile per height: with
# only (1024, ..., 128), an expert of ~127 rows ran as 15 single blocks of
# 8, and E = 64 at F = 1024 took 1.7x longer on CPU (benchmarks/RESULTS.md).
TILE_ROWS = (1024, 512, 256, 128, 64, 32, 16)

# An expert MLP in two halves, pre(p, x) -> h and post(p, h) -> y, with p the
# weights of one expert; the blocked layout saves h for the backward pass.
_Half = Callable[[dict[str, jax.Array], jax.Array], jax.Array]


class Tiles(NamedTuple):
  """A static-size list of tiles, of which the first `count` are real.

  Attributes:
    expert: int32 [T] the expert of each tile.
    start: int32 [T] the first row of each tile.
    count: int32 scalar, tiles in use.
  """

  expert: jax.Array
  start: jax.Array
  count: jax.Array


def _tiles(per_expert: jax.Array, first_row: jax.Array, tile_rows: int,
           max_tiles: int) -> Tiles:
  """per_expert[e] consecutive tiles of `tile_rows` rows from first_row[e]."""
  end = jnp.cumsum(per_expert)
  t = jnp.arange(max_tiles, dtype=jnp.int32)
  expert = segment_of(end, t)
  start = first_row[expert] + (t - (end - per_expert)[expert]) * tile_rows
  return Tiles(expert, start.astype(jnp.int32), end[-1])


def block_schedule(block_expert, group_sizes, block_size, num_experts):
  """Splits each expert's blocks into tiles of TILE_ROWS, then single blocks.

  Tiles never cross experts, so a tile is plain matmuls with one expert's
  weights. Bigger tiles run closer to a dense matmul's speed on CPU, so runs
  of blocks go in the biggest tiles that fit and only the rest block by
  block. Blocks past the used ones are skipped: padding costs only the rows
  that fill each expert's last block.

  Returns:
    [(tiles, rows)]: tile lists, each with its static tile height in rows.
  """
  nb = block_expert.shape[0]
  if group_sizes is None:  # Without counts every block counts as used.
    blocks = jnp.sum(jax.nn.one_hot(block_expert, num_experts,
                                    dtype=jnp.int32), axis=0)
  else:
    blocks = (group_sizes.astype(jnp.int32) + block_size - 1) // block_size
  first = (jnp.cumsum(blocks) - blocks) * block_size
  schedule = []
  sizes = [t // block_size for t in TILE_ROWS if t > block_size] + [1]
  for i, per_tile in enumerate(sizes):
    # At most NB / per_tile tiles, and below the first level each expert
    # has fewer blocks left than the level above takes.
    max_tiles = nb // per_tile
    if i:
      max_tiles = min(max_tiles, num_experts * (sizes[i - 1] // per_tile))
    count = blocks // per_tile
    if max_tiles:  # A list that can hold no tile is left out.
      rows = per_tile * block_size
      schedule.append((_tiles(count, first, rows, max_tiles), rows))
    first = first + count * per_tile * block_size
    blocks = blocks - count * per_tile
  return schedule


def row_slice(a: jax.Array, start: jax.Array, size: int) -> jax.Array:
  return jax.lax.dynamic_slice_in_dim(a, start, size, axis=0)


def put_rows(a: jax.Array, rows: jax.Array, start: jax.Array) -> jax.Array:
  return jax.lax.dynamic_update_slice_in_dim(a, rows, start, axis=0)


def expert_weights(params, e):
  """One expert's weights, read at a traced index."""
  return jax.tree.map(lambda v: v[e], params)


def _tiled_forward(pre, post, params, x, schedule, sizes):
  """y and h = pre(x) for every scheduled tile; other rows stay 0."""
  probe = jax.ShapeDtypeStruct((1, x.shape[-1]), x.dtype)
  pe = jax.eval_shape(expert_weights, params, 0)
  h_shape = jax.eval_shape(pre, pe, probe)
  y_shape = h_shape if post is None else jax.eval_shape(post, pe, h_shape)
  zeros = lambda s: manual_axes.zeros((x.shape[0], s.shape[-1]), s.dtype, x,
                                       params)
  y = zeros(y_shape)
  h = None if post is None else jax.tree.map(zeros, h_shape)
  for tiles, size in zip(schedule, sizes):
    def step(i, carry, tiles=tiles, size=size):
      y, h = carry
      start, pe = tiles.start[i], expert_weights(params, tiles.expert[i])
      ht = pre(pe, row_slice(x, start, size))
      if post is None:
        return put_rows(y, ht, start), h
      h = jax.tree.map(lambda a, b: put_rows(a, b, start), h, ht)
      return put_rows(y, post(pe, ht), start), h

    y, h = jax.lax.fori_loop(0, tiles.count, step, (y, h))
  return y, h


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 5))
def _tiled(pre: _Half, post: _Half | None, params, x, schedule, sizes):
  """post(pre(x)) tile by tile, each tile with its expert's weights.

  Args:
    pre, post: the MLP halves (post None: just pre).
    params: expert weights, each [E, ...].
    x: [R, D] rows.
    schedule: tuple of Tiles; sizes: their tile heights (static).

  Returns:
    [R, D'], 0 in rows no tile covers.
  """
  return _tiled_forward(pre, post, params, x, schedule, sizes)[0]


def _tiled_fwd(pre, post, params, x, schedule, sizes):
  y, h = _tiled_forward(pre, post, params, x, schedule, sizes)
  return y, (params, x, h, schedule)


def _tiled_bwd(pre, post, sizes, residuals, dy):
  params, x, h, schedule = residuals
  dx = manual_axes.zeros(x.shape, x.dtype, x, params, dy)
  # float32 sums over tiles: bfloat16 would round at every tile.
  dparams = jax.tree.map(
      lambda v: manual_axes.zeros(v.shape, jnp.float32, x, params, dy),
      params)
  for tiles, size in zip(schedule, sizes):
    def step(i, carry, tiles=tiles, size=size):
      dx, dparams = carry
      start, e = tiles.start[i], tiles.expert[i]
      pe = expert_weights(params, e)
      dyt = row_slice(dy, start, size)
      if post is None:
        dpe = jax.tree.map(jnp.zeros_like, pe)
      else:
        # From the saved h only post's activation is recomputed; its unused
        # output matmul is dead code that XLA removes.
        ht = jax.tree.map(lambda a: row_slice(a, start, size), h)
        dpe, dyt = jax.vjp(post, pe, ht)[1](dyt)
      dpe_pre, dxt = jax.vjp(pre, pe, row_slice(x, start, size))[1](dyt)
      # Each expert's sum is updated in place in the loop carry: no
      # scatter, and no full [E, ...] cotangent per tile.
      dparams = jax.tree.map(
          lambda acc, a, b: jax.lax.dynamic_update_index_in_dim(
              acc, acc[e] + a.astype(jnp.float32) + b.astype(jnp.float32),
              e, 0),
          dparams, dpe, dpe_pre)
      return put_rows(dx, dxt, start), dparams

    dx, dparams = jax.lax.fori_loop(0, tiles.count, step, (dx, dparams))
  dparams = jax.tree.map(lambda d, v: d.astype(v.dtype), dparams, params)
  return dparams, dx, None


_tiled.defvjp(_tiled_fwd, _tiled_bwd)


def blocked_mlp(pre: _Half, post: _Half | None, params, inputs: ExpertInputs):
  """Runs an MLP over the blocked layout x [NB, blk, D] -> [NB, blk, D'].

  The MLP runs tile by tile (see block_schedule), both halves in one loop,
  so the hidden activations of a tile stay in cache and only h = pre(x) is
  written out, for the backward pass. On CPU (2 cores, T=8192, D=256,
  F=1024, E=8, top-1, forward + backward) this layer took ~1.1x a dense FFN;
  gathering w[block_expert] into [NB, D, F] for one batched einsum took
  ~1.45x (NB weight copies go through memory, and the weight gradient needs
  [NB, D, F] per-block products), a one-hot [NB, E] x [E, D·F] contraction
  was no better, and one loop per matmul ~1.3x (zero-filled [R, F] buffers
  written tile by tile). A custom VJP keeps the backward loop as lean
  (autodiff of a loop would add a full [E, ...] cotangent every step).
  """
  nb, blk, d = inputs.x.shape
  num_experts = jax.tree.leaves(params)[0].shape[0]
  # Inside shard_map rows and weights vary over different mesh axes (rows
  # over 'data', weights over 'model'); see manual_axes.py.
  x, params = manual_axes.vary_alike(inputs.x.reshape(nb * blk, d), params)
  schedule = block_schedule(inputs.block_expert, inputs.group_sizes, blk,
                             num_experts)
  tiles = tuple(t for t, _ in schedule)
  sizes = tuple(s for _, s in schedule)
  y = _tiled(pre, post, params, x, tiles, sizes)
  return y.reshape(nb, blk, -1)
