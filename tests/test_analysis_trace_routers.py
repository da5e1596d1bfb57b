"""Routing traces of every router: routed pairs only, in the plan's choices.

A plan marks a choice it did not send with slot -1 whether capacity dropped
it or the router never made it (ReLU routing's and expert choice's K = E
columns, null experts); traces, loads and drop counts must count the routed
(token, expert) pairs only. Hand-built cases first, then each router traced
on a tiny model.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.analysis import drops, dynamics, replay, routing
from moe_jax.analysis import trace as trace_lib
from moe_jax.analysis.choices import layer_choices
from moe_jax.analysis.handmade import trace_from_arrays
from moe_jax.core.config import MoEConfig
from moe_jax.core.plan import ROUTED
from moe_jax.core.routing.relu import relu_route
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM

B, L, E = 2, 16, 4


def test_relu_columns_are_routed_first_by_probability_and_drops_are_real():
  # Token 0: logits [1, -1, 2, 0] routes experts 2 and 0 (gates 2, 1).
  # Token 1: logits [3, -2, -1, -3] routes expert 0 only, and capacity 1
  # gives expert 0's slot to token 0 (position order): a real drop.
  logits = jnp.array([[[1., -1., 2., 0.], [3., -2., -1., -3.]]])

  @jax.jit  # One compile is faster than dispatching each op.
  def choices(x):
    plan, aux = relu_route(x, capacity=1, target_k=2, l1_weight=0.0)
    return plan.kept, layer_choices(plan, x, aux[ROUTED], ranked=False)

  kept, c = jax.tree.map(np.asarray, choices(logits))
  np.testing.assert_array_equal(c['expert'][0], [[2, 0, 3, 1], [0, 2, 1, 3]])
  np.testing.assert_array_equal(c['gate'][0], [[2, 1, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_array_equal(c['routed'][0], [[1, 1, 0, 0], [1, 0, 0, 0]])
  np.testing.assert_array_equal(c['dropped'][0], [[0, 0, 0, 0], [1, 0, 0, 0]])
  # The plan alone would call all six unsent columns dropped.
  assert int(np.sum(~kept)) == 6
  t = trace_from_arrays(c['expert'][0], 4, routed=c['routed'][0],
                        dropped=c['dropped'][0])
  np.testing.assert_allclose(routing.expert_load(t)['load'][0],
                             [2 / 3, 0, 1 / 3, 0])
  by_e = drops.drops_by_expert(t)
  np.testing.assert_array_equal(by_e['routed'][0], [2, 0, 1, 0])
  np.testing.assert_array_equal(by_e['dropped'][0], [1, 0, 0, 0])


def test_null_choices_are_neither_drops_nor_load():
  # E = 2 real experts and one null expert (index 2): half the choices null.
  t = trace_from_arrays(np.array([[0, 2], [2, 1]]), 2, num_null_experts=1)
  np.testing.assert_array_equal(t.routed, [[[1, 0], [0, 1]]])
  assert t.num_experts == 2 and not t.dropped.any()
  np.testing.assert_allclose(routing.null_fraction(t), [0.5])
  np.testing.assert_allclose(routing.expert_load(t)['load'][0], [0.5, 0.5])
  # Token 1's first choice is null: its rank-0 row counts for no expert.
  np.testing.assert_array_equal(
      routing.expert_label_counts(t, np.array([0, 1]), 2)[0], [[1, 0], [0, 0]])
  # Two layers: a token counts in a transition only where both routed it.
  two = trace_from_arrays(np.array([[[0, 2], [2, 1]], [[1, 0], [0, 2]]]), 2,
                          num_null_experts=1)
  np.testing.assert_array_equal(dynamics.transition_counts(two)[0],
                                [[0, 1], [0, 0]])
  np.testing.assert_array_equal(dynamics.transition_counts(two, rank=1)[0],
                                [[0, 0], [0, 0]])
  # Neighbours share a routed expert in layer 2 only (expert 0).
  np.testing.assert_array_equal(dynamics.reuse_rate(two, 'any')['rate'],
                                [0, 1])


# The routers of issue 21, and expert choice (K = E columns like relu);
# switch, gshard and topk without null experts: tests/test_analysis_trace.py.
ROUTERS = {
    'deepseek': dict(top_k=2, router_options={'deepseek': {
        'n_group': 2, 'topk_group': 1, 'routed_scaling_factor': 2.5}}),
    'sigmoid_quantile': dict(router='sigmoid', top_k=2, router_options={
        'sigmoid': {'bias_update': 'quantile'}}),
    'uniform': dict(top_k=2),
    'relu': dict(top_k=2),
    'expert_choice': dict(top_k=2),
    'topk_null': dict(router='topk', top_k=2, num_null_experts=2),
    'switch_null': dict(router='switch', top_k=1, num_null_experts=2),
    'gshard_null': dict(router='gshard', top_k=2, num_null_experts=2),
}


def _model(name):
  moe = dict(ROUTERS.get(name, {}))
  moe.setdefault('router', name)
  # One MoE layer (compiles fast), a low capacity so some choices drop.
  cfg = ModelConfig(d_model=16, num_layers=1, moe_every=1, num_heads=2,
                    d_ff=16, max_len=L, moe=MoEConfig(
                        num_experts=E, d_ff=16, eval_capacity_factor=0.5,
                        min_capacity=1, init_scale=1.0, **moe))
  with nnx.use_eager_sharding(False):
    return TransformerLM(cfg, rngs=nnx.Rngs(0))


def _batch():
  x = np.random.default_rng(0).integers(0, 256, (B, L + 1))
  return {'inputs': x[:, :-1], 'targets': x[:, 1:]}


def _routing(model, inputs):
  """aux of a forward with return_routing, compiled at O0: the test reads
  values, and a full-optimisation compile costs twice the time."""
  graphdef, state = nnx.split(model)
  fn = lambda s, x: nnx.merge(graphdef, s)(x, return_routing=True)[1]
  return jax.jit(fn).lower(state, inputs).compile(
      {'xla_backend_optimization_level': 0})(state, inputs)


@pytest.mark.parametrize('name', sorted(ROUTERS))
def test_each_router_traces_its_routed_pairs(name):
  model = _model(name)
  batch = _batch()
  t = trace_lib.record_trace(model, [batch])
  k, n = t.top_k, B * L
  aux = _routing(model, jnp.asarray(batch['inputs']))
  for m, block in enumerate(t.layers):
    r = aux['routing'][int(block)]
    kept = np.asarray(r['plan'].kept).reshape(n, -1)
    # Every pair the plan sent is a routed, undropped pair of the trace.
    assert kept.sum() == np.sum(t.routed[m] & ~t.dropped[m])
    assert np.all(t.gate[m][~t.routed[m] | t.dropped[m]] == 0)
    by_e = drops.drops_by_expert(t)
    assert by_e['routed'][m].sum() == t.routed[m].sum()
    # The trace's load is the router's own logged share of routed choices.
    np.testing.assert_allclose(routing.expert_load(t)['load'][m],
                               aux[f'moe_{block}/expert_fraction'], atol=1e-6)
    logits = np.asarray(r['logits']).reshape(n, -1)
    if name == 'relu':  # Routed where the gate ReLU(logit) > 0.
      assert t.routed[m].sum() == np.sum(logits > 0)
      assert np.all(t.routed[m][:, :-1] >= t.routed[m][:, 1:])  # First.
      np.testing.assert_allclose(
          t.dropped[m].sum() / t.routed[m].sum(),
          aux[f'moe_{block}/dropped_fraction'][0], rtol=1e-6)
    elif name == 'expert_choice':  # Plan column e is expert e: drops per
      # expert are the logged per-column drops (picked, buffer full).
      np.testing.assert_allclose(by_e['dropped'][m] / n,
                                 aux[f'moe_{block}/dropped_fraction'],
                                 atol=1e-6)
    else:  # K ranked choices, as the plan made them.
      np.testing.assert_array_equal(
          t.expert[m], np.asarray(r['plan'].expert_index).reshape(n, k))
      null = t.expert[m] >= E
      np.testing.assert_array_equal(t.routed[m], ~null)
      np.testing.assert_allclose(
          t.dropped[m].mean(0), aux[f'moe_{block}/dropped_fraction'],
          atol=1e-6)
      if name.endswith('_null'):
        np.testing.assert_allclose(routing.null_fraction(t)[m],
                                   aux[f'moe_{block}/null_fraction'],
                                   rtol=1e-6)
        assert 0 < null.mean() < 1
    if name == 'uniform':  # Token s goes to (s·K + j) mod E: exact balance.
      s = np.arange(n) % L
      np.testing.assert_array_equal(
          t.expert[m], (s[:, None] * k + np.arange(k)) % E)
    if name == 'deepseek':  # topk_group=1: both choices in one group of 2.
      np.testing.assert_array_equal(t.expert[m, :, 0] // 2,
                                    t.expert[m, :, 1] // 2)
  load = routing.expert_load(t)
  np.testing.assert_allclose(load['load'].sum(-1), 1.0, rtol=1e-6)
  if name == 'uniform':
    np.testing.assert_allclose(load['max_violation'], 0.0, atol=1e-12)
  # The rank-based analyses run and count only routed first choices.
  counts = routing.expert_label_counts(t, t.position % 3, 3)
  np.testing.assert_array_equal(counts.sum((1, 2)), t.routed[..., 0].sum(-1))
  for mode in dynamics.REUSE_MODES:
    assert dynamics.reuse_rate(t, mode)['rate'].shape == (1,)
  assert np.all(np.isfinite(routing.expert_label_mi(t, t.tokens)['nmi']))
  routing.top_tokens(t, layer=0)
  drops.drops_by_group_position(t)
  drops.loss_by_drop(t)
  assert t.meta['num_experts'] == E
  if model.config.moe.spec.replayable:  # E counts real experts only.
    replay.check_compatible(t, model)
  else:
    with pytest.raises(UserInputError, match='cannot replay') as e:
      replay.check_compatible(t, model)
    assert '\n' not in str(e.value)


def test_soft_moe_refuses_a_trace_in_one_line():
  with pytest.raises(UserInputError, match="router='soft' has no discrete "
                     'choices to trace') as e:
    trace_lib.record_trace(_model('soft'), [_batch()])
  assert '\n' not in str(e.value)
