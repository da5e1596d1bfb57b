"""Router replay: recorded choices drive a forward pass; gates still learn."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from moe_jax.analysis import replay as replay_lib
from moe_jax.analysis import trace as trace_lib
from moe_jax.analysis.handmade import trace_from_arrays
from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM

B, L = 3, 16


def _model(seed=0, router='gshard', top_k=2, num_experts=4, num_layers=4,
           **moe):
  cfg = ModelConfig(d_model=16, num_layers=num_layers, num_heads=2, d_ff=32,
                    max_len=L, moe=MoEConfig(
                        num_experts=num_experts, top_k=top_k, router=router,
                        d_ff=32, eval_capacity_factor=0.5, min_capacity=1,
                        init_scale=1.0, **moe))
  with nnx.use_eager_sharding(False):
    return TransformerLM(cfg, rngs=nnx.Rngs(seed))


def _batches(n=2):
  rng = np.random.default_rng(0)
  out = []
  for _ in range(n):
    x = rng.integers(0, 256, (B, L + 1))
    out.append({'inputs': x[:, :-1], 'targets': x[:, 1:]})
  return out


@nnx.jit
def _forward(model, inputs, replay):
  logits, aux = model(inputs, return_routing=True, replay=replay)
  return logits, {i: r['plan'].expert_index for i, r in aux['routing'].items()}


def _choices(model, inputs, replay=None):
  # Jitted: op-by-op dispatch of the whole model is slower than a compile.
  logits, choices = _forward(model, jnp.asarray(inputs), replay)
  return logits, {i: np.asarray(c) for i, c in choices.items()}


@pytest.mark.parametrize('router, top_k', [('gshard', 2), ('switch', 1),
                                           ('topk', 2), ('deepseek', 2)])
def test_replaying_a_model_s_own_trace_changes_nothing(router, top_k):
  model = _model(router=router, top_k=top_k)
  batches = _batches()
  trace = trace_lib.record_trace(model, batches)
  for batch, replay in zip(batches, replay_lib.replay_choices(trace, B, L)):
    own, own_choices = _choices(model, batch['inputs'])
    replayed, choices = _choices(model, batch['inputs'], replay)
    np.testing.assert_array_equal(replayed, own)
    for layer in own_choices:
      np.testing.assert_array_equal(choices[layer], own_choices[layer])
  drift = replay_lib.routing_drift(model, trace, batches)
  assert drift['own_loss'] == drift['replayed_loss']
  assert drift['changed_fraction'] == 0


def test_another_model_takes_the_recorded_choices_and_its_gates_learn():
  first, other = _model(seed=0), _model(seed=1)
  batches = _batches(1)
  trace = trace_lib.record_trace(first, batches)
  replay = replay_lib.replay_choices(trace, B, L)[0]
  own_logits, own_choices = _choices(other, batches[0]['inputs'])
  logits, choices = _choices(other, batches[0]['inputs'], replay)
  for layer, recorded in replay.items():
    # The trace's [N, K] choices, regrouped like the model's groups.
    np.testing.assert_array_equal(choices[layer].reshape(-1, 2),
                                  recorded.reshape(-1, 2))
    assert not np.array_equal(own_choices[layer], choices[layer])
  assert not np.allclose(logits, own_logits)

  graphdef, params, rest = nnx.split(other, nnx.Param, ...)

  def loss(p):
    m = nnx.merge(graphdef, p, rest)
    out, aux = m(jnp.asarray(batches[0]['inputs']), replay=replay)
    ce = optax.softmax_cross_entropy_with_integer_labels(
        out, jnp.asarray(batches[0]['targets'])).mean()
    return ce + aux['aux_loss']

  grads = jax.jit(jax.grad(loss))(params)
  for layer in replay:
    g = np.asarray(grads['blocks'][layer]['ffn']['router_kernel'][...])
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  drift = replay_lib.routing_drift(other, trace, batches)
  assert drift['changed_fraction'] > 0
  assert drift['replayed_loss'] != drift['own_loss']
  # Both MoE layers hold as many choices, so the overall share is the mean.
  assert drift['changed_by_layer'].shape == (2,)
  np.testing.assert_allclose(drift['changed_by_layer'].mean(),
                             drift['changed_fraction'])
  # Block 3 alone: the same own loss, another replayed one.
  alone = replay_lib.routing_drift(other, trace, batches, layers=[3])
  assert alone['own_loss'] == drift['own_loss']
  assert alone['replayed_loss'] not in (drift['replayed_loss'],
                                        drift['own_loss'])


def test_drift_of_a_block_the_trace_lacks_is_one_line():
  trace = dataclasses.replace(trace_from_arrays(np.zeros((2, B * L, 2)), 4),
                              layers=np.array([1, 3]))
  with pytest.raises(UserInputError,
                     match=r'layers=\[2\] names blocks') as e:
    replay_lib.routing_drift(_model(), trace, _batches(1), layers=[2])
  assert '\n' not in str(e.value)


def test_replay_refuses_a_trace_of_another_shape():
  trace = trace_lib.record_trace(_model(), _batches(1))
  for model in (_model(num_experts=8), _model(router='topk', top_k=1),
                _model(num_layers=2)):
    with pytest.raises(UserInputError, match='another shape') as e:
      replay_lib.routing_drift(model, trace, _batches(1))
    assert '\n' not in str(e.value)
  with pytest.raises(UserInputError, match='not a whole number of batches'):
    replay_lib.replay_choices(trace, B, L + 1)


def test_replay_of_a_layer_that_is_not_moe_is_one_line():
  model = _model()
  with pytest.raises(UserInputError, match=r'block\(s\) \[0\]'):
    model(jnp.zeros((B, L), jnp.int32),
          replay={0: jnp.zeros((B, L, 2), jnp.int32)})


def test_routers_that_do_not_pick_k_per_token_refuse_replay():
  x = jnp.ones((2, 8, 4))
  params = {'router_kernel': jnp.ones((4, 4)), 'wi': jnp.ones((4, 4, 8)),
            'wo': jnp.ones((4, 8, 4))}
  config = MoEConfig(router='expert_choice', num_experts=4, d_ff=8)
  with pytest.raises(UserInputError, match="router='expert_choice' cannot "
                     'replay') as e:
    moe_apply(params, x, config, replay=jnp.zeros((2, 8, 1), jnp.int32))
  assert '\n' not in str(e.value)
  topk = MoEConfig(router='topk', top_k=2, num_experts=4, d_ff=8)
  with pytest.raises(UserInputError, match='K=1 per token but the layer '
                     'routes top_k=2'):
    moe_apply(params, x, topk, replay=jnp.zeros((2, 8, 1), jnp.int32))
