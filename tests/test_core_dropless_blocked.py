"""The blocked dropless dispatcher: layout, equivalence, scatter-free grads.

'dropless' (blocked) must equal 'index' whenever index drops nothing (C = S)
and equal 'dropless_ragged' always, in the forward pass and in the gradients
w.r.t. the tokens, the expert weights and the router kernel.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from testlib import moe_params
import pytest

from moe_jax.core.config import MoEConfig
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.core.dispatch import dropless_blocked
from moe_jax.core import experts
from moe_jax.core.experts import blocked_mlp
from moe_jax.core.experts import EXPERT_FNS
from moe_jax.core.moe import moe_apply
from moe_jax.core.plan import RoutingPlan

D, F, E = 6, 8, 4  # Model width, expert width, experts.
B, L = 2, 8  # Two sequences -> G=2 groups of S=8 by default.

# Tiny shapes: XLA's backend optimisations cost more compile time than the
# microseconds they save at run time, and compiles dominate this file.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _params(seed, expert_type='gelu'):
  return moe_params(seed, D, F, E, expert_type)


def _inputs(seed):
  rng = np.random.default_rng(seed)
  return tuple(jnp.asarray(rng.normal(size=(B, L, D)), jnp.float32)
               for _ in range(2))


# ------------------------------------------------------------ the layout

# G=1, S=4, K=2, E=3, blk=2. Flat choices c0..c7 go to experts
# [0, 2 | 2, 1 | 0, 1 | 2, 1]; c3 is unrouted (slot -1).
_EXPERTS = np.array([0, 2, 2, 1, 0, 1, 2, 1], np.int32).reshape(1, 4, 2)
_SLOTS = np.array([0, 0, 1, -1, 1, 0, 2, 1], np.int32).reshape(1, 4, 2)


def _hand_plan():
  kept = _SLOTS >= 0
  return RoutingPlan(jnp.asarray(_EXPERTS), jnp.asarray(kept, jnp.float32),
                     jnp.asarray(_SLOTS), num_experts=3, capacity=None)


def test_block_layout_by_hand():
  layout = dropless_blocked.block_layout(_hand_plan(), block_size=2)
  # NB = (8 + 3·1) // 2 = 5. Expert 0: c0, c4 -> block 0 (rows 0, 1);
  # expert 1: c5, c7 -> block 1 (rows 2, 3); expert 2: c1, c2, c6 -> blocks
  # 2, 3 (rows 4, 5, 6; row 7 pads); block 4 is unused (rows 8, 9) and maps
  # to the last expert. Unrouted c3 points past the end (row 10).
  np.testing.assert_array_equal(layout.block_expert, [0, 1, 2, 2, 2])
  np.testing.assert_array_equal(layout.group_sizes, [2, 2, 3])
  np.testing.assert_array_equal(layout.row, [0, 4, 5, 10, 1, 2, 6, 3])
  # Padding rows hold choice M = 8.
  np.testing.assert_array_equal(layout.choice, [0, 4, 5, 7, 1, 2, 6, 8, 8, 8])


def test_dispatched_rows_hold_tokens_and_zero_padding():
  plan = _hand_plan()
  x = jnp.arange(1, 1 + 4 * D, dtype=jnp.float32).reshape(1, 4, D)
  inputs, _ = dropless_blocked.dispatch(x, plan, block_size=2)
  assert inputs.x.shape == (5, 2, D)
  rows = np.asarray(inputs.x).reshape(10, D)
  tokens = np.asarray(x)[0]
  for r, c in enumerate([0, 4, 5, 7, 1, 2, 6]):
    np.testing.assert_array_equal(rows[r], tokens[c // 2], err_msg=f'row {r}')
  assert (rows[7:] == 0.0).all()  # Padding rows are exact zeros.


def test_default_block_size():
  # Largest power of two <= M / (16·E), clipped to [8, 512].
  assert dropless_blocked.default_block_size(8192, 8) == 64
  assert dropless_blocked.default_block_size(16384, 8) == 128
  assert dropless_blocked.default_block_size(1 << 20, 8) == 512
  assert dropless_blocked.default_block_size(16, 4) == 8
  # NB bounds sum_e ceil(n_e / blk) for every split, e.g. all n_e = 1 mod blk.
  m, e, blk = 8 * 17, 8, 16
  assert dropless_blocked.num_blocks(m, e, blk) == 8 * 2


# ----------------------------------------------------------- equivalence


@functools.partial(_jit, static_argnames=('configs',))
def _value_and_grads(params, x, r, key, configs):
  """For each config: y and grads of sum(y·r) w.r.t. (params, x)."""

  def loss(params, x, config):
    y, _ = moe_apply(params, x, config, train=True, key=key)
    return jnp.sum(y * r), y

  return [jax.grad(loss, argnums=(0, 1), has_aux=True)(params, x, config)
          for config in configs]


# Aux weights 0: the router kernel's gradient flows only through the
# combine weights, i.e. through the dispatcher. capacity_factor = E makes
# index's C = S for any K, so it drops nothing.
_BASE = dict(load_balance_weight=0.0, z_loss_weight=0.0, min_capacity=1,
             d_ff=F, num_experts=E, capacity_factor=E)
_CASES = {
    'switch_gelu': MoEConfig(router='switch', **_BASE),
    'switch_swiglu_g4': MoEConfig(router='switch', expert_type='swiglu',
                                  group_size=4, **_BASE),
    'gshard_all_swiglu': MoEConfig(
        router='gshard', top_k=2,
        router_options={'gshard': {'second_policy': 'all'}},
        expert_type='swiglu', **_BASE),
    # Some second choices are unrouted: their rows must be skipped.
    'gshard_random_gelu': MoEConfig(
        router='gshard', top_k=2,
        router_options={'gshard': {'second_policy': 'random'}}, **_BASE),
}


@pytest.mark.parametrize('case', list(_CASES))
def test_matches_index_and_ragged(case):
  config = _CASES[case]
  assert config.capacity(config.group_size or L, train=True) == (
      config.group_size or L)  # Precondition: C = S.
  params = _params(3, config.expert_type)
  x, r = _inputs(4)
  configs = tuple(dataclasses.replace(config, dispatcher=name)
                  for name in ('index', 'dropless', 'dropless_ragged'))
  results = jax.tree.map(np.asarray, _value_and_grads(
      params, x, r, jax.random.key(5), configs=configs))
  (gp_want, gx_want), y_want = results[0]
  assert np.abs(gp_want['router_kernel']).max() > 1e-3  # Precondition.
  for name, ((gp, gx), y) in zip(('dropless', 'dropless_ragged'),
                                 results[1:]):
    np.testing.assert_allclose(y, y_want, rtol=1e-5, atol=1e-6, err_msg=name)
    np.testing.assert_allclose(gx, gx_want, rtol=1e-5, atol=1e-6,
                               err_msg=name)
    for p in gp_want:
      # Parameter gradients sum over every token, in an order that differs
      # per implementation: float32 rounding reaches ~2e-6 on entries ~1e-2.
      np.testing.assert_allclose(gp[p], gp_want[p], rtol=1e-5, atol=5e-6,
                                 err_msg=f'{name} {p}')


# --------------------------------------------- direct calls, scatter-free


def _layer_loss(dispatcher, block_size=None, expert_type='gelu'):
  """sum(out·r) of dispatch -> experts -> combine on a given plan."""

  def loss(params, x, weights, expert_index, slot, r):
    plan = RoutingPlan(expert_index, weights, slot, num_experts=3,
                       capacity=None)
    if block_size:
      inputs, ctx = dispatcher.dispatch(x, plan, block_size=block_size)
    else:
      inputs, ctx = dispatcher.dispatch(x, plan)
    y = EXPERT_FNS[expert_type](params, inputs)
    return jnp.sum(dispatcher.combine(y, plan, ctx) * r)

  return jax.grad(loss, argnums=(0, 1, 2))


def _direct_args(seed):
  rng = np.random.default_rng(seed)
  params = {'wi': rng.normal(size=(3, D, F)), 'wo': rng.normal(size=(3, F, D)),
            'wi_gate': rng.normal(size=(3, D, F))}
  x, r = rng.normal(size=(2, 1, 4, D))
  weights = rng.uniform(size=(1, 4, 2)) * (_SLOTS >= 0)
  args = (params, x, weights, _EXPERTS, _SLOTS, r)
  return jax.tree.map(lambda a: jnp.asarray(a, a.dtype if a.dtype.kind == 'i'
                                            else jnp.float32), args)


@pytest.mark.parametrize('tile_rows, expert_type', [
    ((), 'gelu'), ((4,), 'gelu'), ((4,), 'swiglu')])
def test_small_blocks_match_ragged(tile_rows, expert_type, monkeypatch):
  # blk = 2 splits experts over several blocks and leaves an unused block;
  # with 4-row tiles expert 2's two blocks run as one tile, the others as
  # single blocks.
  monkeypatch.setattr(blocked_mlp, 'TILE_ROWS', tile_rows)
  args = _direct_args(13)
  got = _jit(_layer_loss(DISPATCHERS['dropless'], 2, expert_type))(*args)
  want = _jit(_layer_loss(DISPATCHERS['dropless_ragged'], None,
                          expert_type))(*args)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_expert_matmul_on_blocks(monkeypatch):
  # The single-matmul path, with and without group sizes (without them the
  # unused block is computed, on zero rows).
  monkeypatch.setattr(blocked_mlp, 'TILE_ROWS', (4,))
  rng = np.random.default_rng(15)
  # blk = 2. Expert 0: block 0; expert 1: block 1 (one row); expert 2:
  # blocks 2-3 (three rows, one 4-row tile); block 4 is unused.
  block_expert = jnp.asarray([0, 1, 2, 2, 2], jnp.int32)
  sizes = jnp.asarray([2, 1, 3], jnp.int32)
  filled = np.array([1, 1, 1, 0, 1, 1, 1, 0, 0, 0]).reshape(5, 2, 1)
  x = rng.normal(size=(5, 2, D)) * filled  # Padding rows are zero.
  x, w, r = (jnp.asarray(a, jnp.float32)
             for a in (x, rng.normal(size=(3, D, F)), rng.normal(size=(5, 2, F))))

  def loss(x, w, sizes):
    y = experts.expert_matmul(x, w, sizes, block_expert)
    return jnp.sum(y * r), y

  def reference(x, w, used):
    # Blocks the group sizes mark unused are not computed: output 0, and
    # no gradient flows through them.
    y = jnp.einsum('bnd,bdf->bnf', x, w[block_expert]) * used[:, None, None]
    return jnp.sum(y * r), y

  for group_sizes, used in ((sizes, [1, 1, 1, 1, 0]), (None, [1] * 5)):
    want, want_y = jax.grad(reference, argnums=(0, 1), has_aux=True)(
        x, w, jnp.asarray(used, jnp.float32))
    grads, y = _jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(
        x, w, group_sizes)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    for g, ref in zip(grads, want):
      np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-5)


def test_tile_schedule():
  # Blocks per expert [5, 0, 3, 1] with 2-block tiles: expert 0 takes two
  # tiles and a block, expert 2 a tile and a block, expert 3 a block; the
  # 2 blocks past the used 9 (NB = 11) are not scheduled.
  block_expert = jnp.asarray([0] * 5 + [2] * 3 + [3] * 3, jnp.int32)
  group_sizes = jnp.asarray([9, 0, 6, 1], jnp.int32)  # blk = 2.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(blocked_mlp, 'TILE_ROWS', (4,))
    (tiles, rows), (blocks, blk) = blocked_mlp.block_schedule(
        block_expert, group_sizes, 2, 4)
  assert (rows, blk) == (4, 2)
  assert int(tiles.count) == 3 and int(blocks.count) == 3
  np.testing.assert_array_equal(tiles.expert[:3], [0, 0, 2])
  np.testing.assert_array_equal(tiles.start[:3], [0, 4, 10])
  np.testing.assert_array_equal(blocks.expert[:3], [0, 2, 3])
  np.testing.assert_array_equal(blocks.start[:3], [8, 14, 16])


def test_backward_has_no_scatter():
  args = _direct_args(14)

  def hlo(name, **kw):
    return jax.jit(_layer_loss(DISPATCHERS[name], **kw)).lower(
        *args).compile().as_text()

  # Tokens, gates and expert weights all get gradients with gathers and
  # dots only (the default block size too, a single block per expert).
  assert ' scatter(' not in hlo('dropless', block_size=2)
  assert ' scatter(' not in hlo('dropless')
  # The check can fire: the ragged version combines with a scatter-add.
  assert ' scatter(' in hlo('dropless_ragged')
