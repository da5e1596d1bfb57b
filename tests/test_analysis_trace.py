"""Routing traces: recording changes nothing and the file round-trips."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.analysis import trace as trace_lib
from moe_jax.core.config import MoEConfig
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM

B, L = 3, 16


def _model(router='gshard', top_k=2, **moe):
  # A low capacity factor makes some choices drop, so the dropped flags are
  # exercised, and group_size=8 makes groups differ from sequences.
  cfg = ModelConfig(d_model=16, num_layers=4, num_heads=2, d_ff=32,
                    max_len=L, moe=MoEConfig(
                        num_experts=4, top_k=top_k, router=router, d_ff=32,
                        eval_capacity_factor=0.5, min_capacity=1,
                        init_scale=1.0, **moe))
  with nnx.use_eager_sharding(False):
    return TransformerLM(cfg, rngs=nnx.Rngs(0))


def _batches(n=2, domains=True):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    x = rng.integers(0, 256, (B, L + 1))
    b = {'inputs': x[:, :-1], 'targets': x[:, 1:]}
    if domains:
      b['domains'] = rng.integers(0, 3, (B, L))
    out.append(b)
  return out


@pytest.mark.parametrize('group_size', [None, 8])
def test_recording_does_not_change_outputs(group_size):
  model = _model(group_size=group_size)
  graphdef, params = nnx.split(model)
  tokens = jnp.asarray(_batches(1)[0]['inputs'])

  def run(p, t, flag):
    return nnx.merge(graphdef, p)(t, train=False, return_routing=flag)

  plain_logits, plain_aux = jax.jit(lambda p, t: run(p, t, False))(params,
                                                                   tokens)
  logits, aux = jax.jit(lambda p, t: run(p, t, True))(params, tokens)
  np.testing.assert_array_equal(np.asarray(logits), np.asarray(plain_logits))
  routing = aux.pop('routing')
  assert sorted(routing) == [1, 3]
  assert sorted(aux) == sorted(plain_aux)  # Logged keys are unchanged.
  for k in plain_aux:
    np.testing.assert_array_equal(np.asarray(aux[k]), np.asarray(plain_aux[k]))


def test_trace_matches_the_logged_metrics():
  model = _model()
  batches = _batches(1)
  trace = trace_lib.record_trace(model, batches)
  _, aux = model(jnp.asarray(batches[0]['inputs']))
  n = B * L
  assert trace.expert.shape == (2, n, 2)
  assert trace.probs.shape == (2, n, 4)
  for m, layer in enumerate(trace.layers):
    np.testing.assert_allclose(trace.dropped[m].mean(0),
                               aux[f'moe_{layer}/dropped_fraction'], atol=1e-6)
  assert trace.dropped.any()  # The low capacity factor did drop.
  np.testing.assert_array_equal(trace.gate[trace.dropped], 0.0)
  assert np.all(trace.gate[~trace.dropped] > 0)
  # The chosen experts' probabilities are the router's top probabilities.
  np.testing.assert_allclose(trace.prob[..., 0], trace.probs.max(-1),
                             rtol=1e-6)
  np.testing.assert_allclose(trace.probs.sum(-1), 1.0, rtol=1e-5)
  np.testing.assert_array_equal(trace.tokens, batches[0]['inputs'].reshape(-1))
  np.testing.assert_array_equal(trace.domain,
                                batches[0]['domains'].reshape(-1))
  np.testing.assert_array_equal(trace.position, np.tile(np.arange(L), B))
  assert trace.meta['group_size'] == L
  assert trace.meta['capacity'] == 4  # ceil(2·16·0.5/4)


def test_group_positions_follow_the_groups():
  trace = trace_lib.record_trace(_model(group_size=8), _batches(2))
  assert trace.num_tokens == 2 * B * L
  np.testing.assert_array_equal(trace.group_position,
                                np.arange(2 * B * L) % 8)
  np.testing.assert_array_equal(trace.sequence, np.arange(2 * B * L) // L)


def test_save_and_load_round_trip(tmp_path):
  trace = trace_lib.record_trace(_model(router='switch', top_k=1),
                                 _batches(1, domains=False),
                                 meta={'note': 'x'})
  assert not trace.has_domains
  path = tmp_path / 'trace.npz'
  trace_lib.save_trace(trace, path)
  back = trace_lib.load_trace(path)
  assert back.meta == trace.meta and back.meta['note'] == 'x'
  for name in trace_lib._ARRAY_FIELDS:  # pylint: disable=protected-access
    np.testing.assert_array_equal(getattr(back, name), getattr(trace, name))
    assert getattr(back, name).dtype == getattr(trace, name).dtype
  # Plain numpy reads it too: the format needs no moe_jax.
  with np.load(path) as f:
    assert f['expert'].shape == (2, B * L, 1)


def test_load_refuses_another_format(tmp_path):
  path = tmp_path / 'bad.npz'
  np.savez(path, meta=np.asarray('{"format_version": 99}'))
  with pytest.raises(ValueError, match='format 99'):
    trace_lib.load_trace(path)


@pytest.mark.parametrize('router, options', [
    ('sigmoid', {}),
    # Group-limited: expert 3's group (2, 3) is always kept, by its bias.
    ('deepseek', {'n_group': 2, 'topk_group': 1,
                  'routed_scaling_factor': 2.5})])
def test_trace_follows_the_loss_free_bias(router, options):
  # A large bias on expert 3 (selection only) makes it every token's first
  # choice; the trace must record the biased choices, from the model and
  # from its (graphdef, params, router_state) split alike.
  model = _model(router=router, top_k=2, router_options={
      router: {'bias_update_rate': 1e-3, **options}})
  for layer in (1, 3):
    model.blocks[layer].ffn.router_bias[...] = jnp.array([0., 0., 0., 50.])
  batches = _batches(1)
  from_model = trace_lib.record_trace(model, batches)
  graphdef, params, bias = nnx.split(model, nnx.Param, ...)
  from_split = trace_lib.record_trace((graphdef, params, bias), batches)
  np.testing.assert_array_equal(from_model.expert[..., 0], 3)
  if router == 'deepseek':  # The second choice stays in the kept group.
    np.testing.assert_array_equal(from_model.expert[..., 1], 2)
  np.testing.assert_array_equal(from_split.expert, from_model.expert)
  np.testing.assert_array_equal(from_split.gate, from_model.gate)
