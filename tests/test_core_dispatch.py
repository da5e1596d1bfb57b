"""Dispatcher and expert equivalence: einsum vs index vs fused vs dropless.

The einsum dispatcher is the readable GShard reference; index, fused and
dropless must match it (dropless only when nothing is dropped) in the forward pass and
in the gradients w.r.t. the tokens, the expert weights and the router kernel.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from testlib import moe_params
import pytest

from moe_jax.core.routing import gshard as gshard_lib
from moe_jax.core.routing import switch as switch_lib
from moe_jax.core.config import MoEConfig
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.core.dispatch.base import ExpertInputs
from moe_jax.core.experts import EXPERT_FNS
from moe_jax.core.moe import moe_apply

D, F, E = 6, 8, 4  # Model width, expert width, experts.
B, L = 2, 8  # Two sequences -> G=2 groups of S=8 by default.


def _params(seed, expert_type='gelu'):
  return moe_params(seed, D, F, E, expert_type)


def _inputs(seed):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
  r = jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
  return x, r


# Tiny shapes: XLA's backend optimisations cost more compile time than the
# microseconds they save at run time, and compiles dominate this file.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


@functools.partial(_jit, static_argnames=('configs', 'train'))
def _value_and_grads(params, x, r, key, configs, train):
  """For each config: sum(y·r) + aux loss, y, aux, grads w.r.t. (params, x).

  All configs share one jit so a comparison costs one compile.
  """

  def loss(params, x, config):
    y, aux = moe_apply(params, x, config, train=train, key=key)
    return jnp.sum(y * r) + aux['aux_loss'], (y, aux)

  results = []
  for config in configs:
    (value, (y, aux)), grads = jax.value_and_grad(
        loss, argnums=(0, 1), has_aux=True)(params, x, config)
    results.append((value, y, aux, grads))
  return results


def _with(config, **changes):
  return dataclasses.replace(config, **changes)


def _run(configs, params, x, r, train, key=None):
  out = _value_and_grads(params, x, r, key, configs=tuple(configs),
                         train=train)
  return jax.tree.map(np.asarray, out)


def _assert_same(got, want, rtol=1e-5, atol=1e-6):
  _, y_got, _, (gp_got, gx_got) = got
  _, y_want, _, (gp_want, gx_want) = want
  np.testing.assert_allclose(y_got, y_want, rtol=rtol, atol=atol)
  np.testing.assert_allclose(gx_got, gx_want, rtol=rtol, atol=atol)
  assert gp_got.keys() == gp_want.keys()
  for name in gp_want:
    np.testing.assert_allclose(gp_got[name], gp_want[name], rtol=rtol,
                               atol=atol, err_msg=name)


# Aux-loss weights are 0 so the router kernel gets its gradient only through
# the combine weights, i.e. through the dispatcher under test.
_RANDOM = {'gshard': {'second_policy': 'random'}}
_NO_AUX = dict(load_balance_weight=0.0, z_loss_weight=0.0, min_capacity=1,
               d_ff=F, num_experts=E)

_DROPPING = {
    # C = ceil(1·8·0.5/4) = 1 per expert per group: most tokens dropped.
    'switch_top1': (MoEConfig(router='switch', top_k=1, capacity_factor=0.5,
                              **_NO_AUX), 'gelu'),
    # C = 2; train with the random second policy (same key for both).
    'gshard_top2': (MoEConfig(router='gshard', top_k=2, capacity_factor=0.5,
                              router_options=_RANDOM, **_NO_AUX), 'gelu'),
    # group_size=4 -> G=4 groups of S=4, C = ceil(2·4·0.75/4) = 2.
    'topk2_groups': (MoEConfig(router='topk', top_k=2, capacity_factor=0.75,
                               group_size=4, expert_type='swiglu',
                               **_NO_AUX), 'swiglu'),
}


@pytest.mark.parametrize('case', list(_DROPPING))
def test_einsum_and_index_agree_with_drops(case):
  config, expert_type = _DROPPING[case]
  params = _params(0, expert_type)
  x, r = _inputs(1)
  key = jax.random.key(2)
  want, got, fused = _run([_with(config, dispatcher=name)
                           for name in ('einsum', 'index', 'fused')],
                          params, x, r, True, key)
  # Preconditions: the case really drops, and the router gets a gradient.
  assert np.sum(want[2]['dropped_fraction']) > 0
  assert np.abs(want[3][0]['router_kernel']).max() > 1e-3
  _assert_same(got, want)
  _assert_same(fused, want)


_NO_DROP = {
    # capacity_factor = E makes C = S for any K (clamped), so index drops
    # nothing and must equal dropless.
    'switch_top1': MoEConfig(router='switch', top_k=1, capacity_factor=E,
                             **_NO_AUX),
    # The random policy leaves some second choices unrouted: dropless must
    # skip those rows exactly as index does.
    'gshard_top2': MoEConfig(router='gshard', top_k=2, capacity_factor=E,
                             router_options=_RANDOM, **_NO_AUX),
}


@pytest.mark.parametrize('case', list(_NO_DROP))
def test_dropless_and_index_agree_without_drops(case):
  config = _NO_DROP[case]
  assert config.capacity(L, train=True) == L  # Precondition: C = S.
  params = _params(3)
  x, r = _inputs(4)
  key = jax.random.key(5)
  want, got, fused = _run([_with(config, dispatcher=name)
                           for name in ('index', 'dropless', 'dropless_fused')],
                          params, x, r, True, key)
  np.testing.assert_allclose(want[2]['dropped_fraction'], 0.0)
  assert np.abs(want[3][0]['router_kernel']).max() > 1e-3
  _assert_same(got, want)
  _assert_same(fused, want)


# ------------------------------------------------- direct dispatcher calls


@functools.partial(_jit, static_argnames=('capacity',))
def _direct(params, x, capacity):
  """Router on logits = x @ w_r, then dispatch, gelu experts, combine."""
  logits = x @ params['router_kernel']
  plan, _ = switch_lib.switch_top1(logits, capacity=capacity)
  outs = []
  for name in ('einsum', 'index'):
    dispatcher = DISPATCHERS[name]
    inputs, ctx = dispatcher.dispatch(x, plan)
    y = EXPERT_FNS['gelu'](params, inputs)
    outs.append((dispatcher.combine(y, plan, ctx), inputs.x))
  return outs, plan


def test_dropped_tokens_output_exactly_zero():
  params = _params(6)
  x, _ = _inputs(7)
  ((out_e, buf_e), (out_i, buf_i)), plan = _direct(params, x, capacity=2)
  kept = np.asarray(plan.kept).any(-1)  # [G, S]
  assert (~kept).sum() >= 2 and kept.sum() >= 2  # Precondition.
  for out in (out_e, out_i):
    out = np.asarray(out)
    # Exactly zero, not merely small: the residual alone carries them.
    assert (out[~kept] == 0.0).all()
    assert (np.abs(out[kept]).max(-1) > 0).all()
  # Both dispatchers fill the same [E, G·C, D] buffer row for row.
  np.testing.assert_array_equal(buf_e.shape, (E, 2 * 2, D))
  np.testing.assert_allclose(buf_i, buf_e, rtol=1e-6, atol=1e-7)


@_jit
def _dropless_inputs(x, logits, key):
  plan, _ = gshard_lib.gshard_top2(logits, capacity=None, key=key,
                                second_policy='random')
  inputs, _ = DISPATCHERS['dropless_ragged'].dispatch(x, plan)
  return inputs, plan


def test_dropless_ragged_groups_hold_only_routed_choices():
  # Unrouted second choices must fall outside every group, so the grouped
  # matmul does not spend compute on rows whose weight is 0 anyway.
  params = _params(10)
  x, _ = _inputs(11)
  logits = x @ params['router_kernel']
  inputs, plan = _dropless_inputs(x, logits, jax.random.key(12))
  kept = np.asarray(plan.kept)
  assert 0 < (~kept).sum()  # Precondition: some choices unrouted.
  want = np.bincount(np.asarray(plan.expert_index)[kept], minlength=E)
  np.testing.assert_array_equal(inputs.group_sizes, want)
  # Rows are sorted by expert: row i of group e is a token routed to e.
  sorted_x = np.asarray(inputs.x)
  tokens = np.asarray(x).reshape(-1, D)
  start = 0
  for e, n in enumerate(want):
    for row in sorted_x[start:start + n]:
      owners = np.flatnonzero((tokens == row).all(-1))
      assert len(owners) == 1
      g_s = np.unravel_index(owners[0], (B, L))
      assert e in np.asarray(plan.expert_index)[g_s][kept[g_s]]
    start += n


# ------------------------------------------------------------- experts


@functools.partial(_jit, static_argnames=('expert_type',))
def _both_layouts(params, padded, sorted_x, group_sizes, expert_type):
  fn = EXPERT_FNS[expert_type]
  return (fn(params, ExpertInputs(padded)),
          fn(params, ExpertInputs(sorted_x, group_sizes)))


@pytest.mark.parametrize('expert_type', ['gelu', 'swiglu'])
def test_padded_and_sorted_expert_layouts_agree(expert_type):
  params = _params(8, expert_type)
  rng = np.random.default_rng(9)
  # Ragged groups (one empty) plus 2 padding rows past their sum.
  sizes = [2, 0, 3, 1]
  rows = rng.normal(size=(sum(sizes) + 2, D)).astype(np.float32)
  # The same rows in a padded [E, N, D] layout, N = max group size.
  padded = np.zeros((E, max(sizes), D), np.float32)
  start = 0
  for e, n in enumerate(sizes):
    padded[e, :n] = rows[start:start + n]
    start += n
  out_padded, out_sorted = _both_layouts(
      params, padded, rows, np.asarray(sizes, np.int32),
      expert_type=expert_type)
  out_padded, out_sorted = np.asarray(out_padded), np.asarray(out_sorted)
  start = 0
  for e, n in enumerate(sizes):
    np.testing.assert_allclose(out_sorted[start:start + n], out_padded[e, :n],
                               rtol=1e-5, atol=1e-6, err_msg=f'expert {e}')
    start += n
  # Each row against a float64 numpy MLP with its own expert's weights.
  start = 0
  for e, n in enumerate(sizes):
    np.testing.assert_allclose(
        out_sorted[start:start + n],
        _numpy_expert(params, rows[start:start + n], e, expert_type),
        rtol=1e-4, atol=1e-5, err_msg=f'expert {e}')
    start += n
  # Padding rows are not computed: they come out as exact zeros.
  assert (out_sorted[start:] == 0.0).all()


def _numpy_expert(params, x, e, expert_type):
  w = {k: np.asarray(v[e], np.float64) for k, v in params.items()
       if k != 'router_kernel'}
  h = x.astype(np.float64) @ w['wi']
  if expert_type == 'gelu':
    # jax.nn.gelu defaults to the tanh approximation.
    h = 0.5 * h * (1 + np.tanh(np.sqrt(2 / np.pi) * (h + 0.044715 * h**3)))
  else:
    g = x.astype(np.float64) @ w['wi_gate']
    h = g / (1 + np.exp(-g)) * h
  return h @ w['wo']
