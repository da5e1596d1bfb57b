"""Expert MLPs that gather their tokens inside the loop over experts.

The capacity layout [E, G·C, D] holds every token K·cf times, and the blocked
dropless layout [NB·blk, D] K times. With many small experts (E = 64, K = 8,
F = 128 < D) writing and reading those copies, and the [G·S·K, D] choices of
the K-way combine, cost more than the expert matmuls' extra time
(benchmarks/RESULTS.md, section 2). Here the buffers hold only token indices
and gates: a loop over tiles of rows, each tile one expert's, gathers the
tile's tokens, runs the expert's MLP and adds its gate-weighted output into
the tokens' sums, so the only [rows, D] arrays are one tile's. A custom VJP
runs the backward pass as the same loop; the gates' gradient comes from a
product the backward pass computes anyway, so no output matmul is redone.

Tiles: one per expert (its N rows) in the capacity layout; in the blocked
layout, runs of one expert's blocks, as blocked_mlp.block_schedule cuts them
(padding blocks past the used ones are skipped).

The MLP is given as pre(p, x) -> h (the input matmuls; h is saved for the
backward pass), act(h) -> a [n, F] (elementwise, no weights) and the output
matmul a @ p['wo'].
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core.experts import manual_axes
from moe_jax.core.experts.blocked_mlp import (Tiles, block_schedule,
                                              expert_weights, put_rows,
                                              row_slice)
from moe_jax.core.dispatch.base import ExpertInputs

_Pre = Callable[[dict[str, jax.Array], jax.Array], object]
_Act = Callable[[object], jax.Array]


def _gather(a: jax.Array, index: jax.Array) -> jax.Array:
  """a[index] with 0 where index == len(a) (an empty row)."""
  return jnp.asarray(a).at[index].get(mode='fill', fill_value=0)


def _forward(pre, act, params, x, rows, weights, schedule, sizes):
  probe = jax.ShapeDtypeStruct((1, x.shape[-1]), x.dtype)
  h_shape = jax.eval_shape(pre, expert_weights(params, 0), probe)
  hs = jax.tree.map(
      lambda s: manual_axes.zeros((rows.shape[0], s.shape[-1]), s.dtype, x,
                                  params), h_shape)
  out = manual_axes.zeros(x.shape, x.dtype, x, params)
  for tiles, size in zip(schedule, sizes):
    def step(i, carry, tiles=tiles, size=size):
      out, hs = carry
      start, pe = tiles.start[i], expert_weights(params, tiles.expert[i])
      r = row_slice(rows, start, size)
      h = pre(pe, _gather(x, r))
      y = act(h) @ pe['wo']
      w = row_slice(weights, start, size)[:, None].astype(y.dtype)
      # mode='drop' skips the empty rows (index T).
      out = out.at[r].add(y * w, mode='drop')
      return out, jax.tree.map(lambda buf, v: put_rows(buf, v, start), hs, h)

    out, hs = jax.lax.fori_loop(0, tiles.count, step, (out, hs))
  return out, hs


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 7))
def _gathered(pre: _Pre, act: _Act, params, x, rows, weights, schedule,
              sizes):
  return _forward(pre, act, params, x, rows, weights, schedule, sizes)[0]


def _gathered_fwd(pre, act, params, x, rows, weights, schedule, sizes):
  out, hs = _forward(pre, act, params, x, rows, weights, schedule, sizes)
  return out, (params, x, rows, weights, schedule, hs)


def _gathered_bwd(pre, act, sizes, residuals, dout):
  params, x, rows, weights, schedule, hs = residuals
  like = (x, params, dout)
  dx = manual_axes.zeros(x.shape, x.dtype, *like)
  # float32 sums over an expert's tiles: bfloat16 would round at each one.
  dparams = jax.tree.map(
      lambda v: manual_axes.zeros(v.shape, jnp.float32, *like), params)
  dweights = manual_axes.zeros(weights.shape, weights.dtype, *like)
  for tiles, size in zip(schedule, sizes):
    def step(i, carry, tiles=tiles, size=size):
      dx, dparams, dweights = carry
      start, e = tiles.start[i], tiles.expert[i]
      pe, r = expert_weights(params, e), row_slice(rows, start, size)
      xr, dout_r = _gather(x, r), _gather(dout, r)
      w = row_slice(weights, start, size)[:, None].astype(dout.dtype)
      a, act_vjp = jax.vjp(act, jax.tree.map(
          lambda b: row_slice(b, start, size), hs))
      # u = dout · wo^T serves both the gate's gradient, <a, u> = <y, dout>,
      # and the hidden units' gradient, w·u.
      u = dout_r @ pe['wo'].T
      dw = jnp.sum(a.astype(jnp.float32) * u.astype(jnp.float32), axis=-1)
      dwo = (a * w).T @ dout_r
      dpe, dxr = jax.vjp(pre, pe, xr)[1](act_vjp(u * w)[0])
      dpe = dict(dpe, wo=dwo)  # pre does not read wo: its cotangent is 0.
      # Each expert's sum is updated in place in the loop carry.
      dparams = jax.tree.map(
          lambda acc, g: jax.lax.dynamic_update_index_in_dim(
              acc, acc[e] + g.astype(jnp.float32), e, 0), dparams, dpe)
      dweights = put_rows(dweights, dw.astype(dweights.dtype), start)
      return dx.at[r].add(dxr.astype(dx.dtype), mode='drop'), dparams, dweights

    dx, dparams, dweights = jax.lax.fori_loop(0, tiles.count, step,
                                              (dx, dparams, dweights))
  dparams = jax.tree.map(lambda d, v: d.astype(v.dtype), dparams, params)
  return dparams, dx, None, dweights, None


_gathered.defvjp(_gathered_fwd, _gathered_bwd)


def _schedule(inputs: ExpertInputs, num_experts: int):
  """[(Tiles, rows per tile)] over the flat rows of the layout."""
  if inputs.block_expert is None:  # Capacity: expert e's N rows, one tile.
    n = inputs.rows.shape[-1]
    experts = jnp.arange(num_experts, dtype=jnp.int32)
    return [(Tiles(experts, experts * n, jnp.int32(num_experts)), n)]
  return block_schedule(inputs.block_expert, inputs.group_sizes,
                        inputs.rows.shape[-1], num_experts)


def gathered_mlp(pre: _Pre, act: _Act, params: dict[str, jax.Array],
                 inputs: ExpertInputs) -> jax.Array:
  """Σ over each token's rows of weight · (act(pre(x)) @ wo[e]).

  Args:
    pre, act: the MLP before its output matmul (see the module docstring).
    params: expert weights, each [E, ...], with wo [E, F, D].
    inputs: a gathered layout: x [T, D] tokens; rows int32 the token of each
      buffer row (T: empty) and row_weights its gate, both [E, N] (capacity)
      or [NB, blk] with block_expert and group_sizes (blocked dropless).

  Returns:
    [T, D] gate-weighted sums of the experts' outputs (0 for a token in no
    row).
  """
  num_experts = jax.tree.leaves(params)[0].shape[0]
  schedule = _schedule(inputs, num_experts)
  x, params, weights = manual_axes.vary_alike(
      inputs.x, params, inputs.row_weights.reshape(-1))
  return _gathered(pre, act, params, x, inputs.rows.reshape(-1), weights,
                   tuple(t for t, _ in schedule),
                   tuple(s for _, s in schedule))
