"""Expert MLPs that gather their tokens inside the loop over experts.

The capacity layout [E, G·C, D] holds every token K·cf times. With many
small experts (E = 64, K = 8, F = 128 < D) writing and reading those copies,
and the [G·S·K, D] choices of the K-way combine, cost more than the expert
matmuls' extra time (benchmarks/RESULTS.md, section 2). Here one expert at a
time, in a loop, gathers its rows straight from the tokens, runs its MLP and
adds its gate-weighted output into the tokens' sums, so the only [rows, D]
arrays are one expert's. A custom VJP runs the backward pass as the same
loop; the gates' gradient comes from a product the backward pass computes
anyway, so no output matmul is redone.

The MLP is given as pre(p, x) -> h (the input matmuls; h is saved for the
backward pass), act(h) -> a [n, F] (elementwise, no weights) and the output
matmul a @ p['wo'].
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import manual_axes
from moe_jax.core.dispatch.base import ExpertInputs

_Pre = Callable[[dict[str, jax.Array], jax.Array], object]
_Act = Callable[[object], jax.Array]


def _expert(params, e):
  return jax.tree.map(lambda v: v[e], params)


def _rows(a: jax.Array, index: jax.Array) -> jax.Array:
  """a[index] with 0 where index == len(a) (an empty buffer row)."""
  return jnp.asarray(a).at[index].get(mode='fill', fill_value=0)


def _forward(pre, act, params, x, rows, weights):
  e_count = rows.shape[0]
  probe = jax.ShapeDtypeStruct((rows.shape[1], x.shape[-1]), x.dtype)
  h_shape = jax.eval_shape(pre, _expert(params, 0), probe)
  hs = jax.tree.map(
      lambda s: manual_axes.zeros((e_count, *s.shape), s.dtype, x, params),
      h_shape)
  out = manual_axes.zeros(x.shape, x.dtype, x, params)

  def step(e, carry):
    out, hs = carry
    pe, r = _expert(params, e), rows[e]
    h = pre(pe, _rows(x, r))
    y = act(h) @ pe['wo']
    # mode='drop' skips the empty rows (index T).
    out = out.at[r].add(y * weights[e][:, None].astype(y.dtype), mode='drop')
    hs = jax.tree.map(lambda buf, v: buf.at[e].set(v), hs, h)
    return out, hs

  return jax.lax.fori_loop(0, e_count, step, (out, hs))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _gathered(pre: _Pre, act: _Act, params, x, rows, weights):
  return _forward(pre, act, params, x, rows, weights)[0]


def _gathered_fwd(pre, act, params, x, rows, weights):
  out, hs = _forward(pre, act, params, x, rows, weights)
  return out, (params, x, rows, weights, hs)


def _gathered_bwd(pre, act, residuals, dout):
  params, x, rows, weights, hs = residuals
  dx = manual_axes.zeros(x.shape, x.dtype, x, params, dout)
  dparams = jax.tree.map(
      lambda v: manual_axes.zeros(v.shape, v.dtype, x, params, dout), params)
  dweights = manual_axes.zeros(weights.shape, weights.dtype, x, params, dout)

  def step(e, carry):
    dx, dparams, dweights = carry
    pe, r = _expert(params, e), rows[e]
    xr, dout_r = _rows(x, r), _rows(dout, r)
    w = weights[e][:, None].astype(dout.dtype)
    a, act_vjp = jax.vjp(act, jax.tree.map(lambda b: b[e], hs))
    # u = dout · wo^T serves both the gate's gradient, <a, u> = <y, dout>,
    # and the hidden units' gradient, w·u.
    u = dout_r @ pe['wo'].T
    dw = jnp.sum(a.astype(jnp.float32) * u.astype(jnp.float32), axis=-1)
    dwo = (a * w).T @ dout_r
    dpe, dxr = jax.vjp(pre, pe, xr)[1](act_vjp(u * w)[0])
    dpe = dict(dpe, wo=dpe['wo'] + dwo.astype(dpe['wo'].dtype))
    # Each expert is visited once, so its gradients are set, not summed.
    dparams = jax.tree.map(lambda acc, g: acc.at[e].set(g.astype(acc.dtype)),
                           dparams, dpe)
    dweights = dweights.at[e].set(dw.astype(dweights.dtype))
    return dx.at[r].add(dxr.astype(dx.dtype), mode='drop'), dparams, dweights

  dx, dparams, dweights = jax.lax.fori_loop(0, rows.shape[0], step,
                                            (dx, dparams, dweights))
  return dparams, dx, None, dweights


_gathered.defvjp(_gathered_fwd, _gathered_bwd)


def gathered_mlp(pre: _Pre, act: _Act, params: dict[str, jax.Array],
                 inputs: ExpertInputs) -> jax.Array:
  """Σ over each token's rows of weight · (act(pre(x)) @ wo[e]).

  Args:
    pre, act: the MLP before its output matmul (see the module docstring).
    params: expert weights, each [E, ...], with wo [E, F, D].
    inputs: the gathered layout: x [T, D] tokens, rows int32 [E, N] the token
      of each buffer row (T: empty), row_weights [E, N] its gate.

  Returns:
    [T, D] gate-weighted sums of the experts' outputs (0 for a token in no
    row).
  """
  x, params, weights = manual_axes.vary_alike(inputs.x, params,
                                              inputs.row_weights)
  return _gathered(pre, act, params, x, inputs.rows, weights)
