"""BPR, noisy top-k, shared experts and the fine-grained split."""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from moe_jax.core.routing import bpr, noisy_topk
from moe_jax.core.routing import common as routing_common
from moe_jax.core.routing import switch as switch_lib
from moe_jax.core.config import MoEConfig
from moe_jax.config.fine_grained import split_experts
from moe_jax.core.moe import moe_apply
from moe_jax.core.plan import DROPPED
from moe_jax.errors import UserInputError
from moe_jax.layers.moe import MoELayer
from moe_jax.models.param_count import count_params
from testlib import moe_params

_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _log(p):
  return np.log(np.asarray(p, np.float32))[None]


# ------------------------------------------------------------------ BPR --

_BPR_P = [[0.6, 0.4], [0.9, 0.1], [0.3, 0.7], [0.2, 0.8]]


def test_bpr_gives_capacity_to_the_most_confident_tokens():
  plan, aux = _jit(functools.partial(bpr.bpr_top_k, capacity=1, k=1))(
      _log(_BPR_P))
  # e0 is wanted by t0 (.6) and t1 (.9), e1 by t2 (.7) and t3 (.8). In
  # position order t0 and t2 would win; by priority t1 and t3 do.
  np.testing.assert_array_equal(plan.expert_index[0, :, 0], [0, 0, 1, 1])
  np.testing.assert_array_equal(plan.slot[0, :, 0],
                                [DROPPED, 0, DROPPED, 0])
  np.testing.assert_allclose(plan.combine_weights[0, :, 0], [0, 0.9, 0, 0.8],
                             atol=1e-6)
  np.testing.assert_allclose(aux['dropped_fraction'], [0.5])
  switch, _ = _jit(functools.partial(switch_lib.switch_top1, capacity=1))(
      _log(_BPR_P))
  np.testing.assert_array_equal(switch.slot[0, :, 0], [0, DROPPED, 0, DROPPED])


def test_bpr_without_drops_equals_top_k_with_raw_gates():
  logits = jax.random.normal(jax.random.key(0), (3, 8, 4))
  plan, _ = bpr.bpr_top_k(logits, capacity=None, k=2)
  probs = jax.nn.softmax(logits)
  gates, index = routing_common.top_k_experts(probs, 2)
  np.testing.assert_array_equal(plan.expert_index, index)
  np.testing.assert_allclose(plan.combine_weights, gates, rtol=1e-6)
  assert bool(jnp.all(plan.kept))


# ----------------------------------------------------------- noisy top-k --


def _phi(z):
  return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def test_noisy_top_k_losses_hand_computed():
  logits = np.float32([[[2, 1, 0], [0, 1, 2]]])  # [1, 2, 3]
  noise = np.zeros_like(logits)  # std softplus(0) = ln 2
  plan, aux = _jit(functools.partial(noisy_topk.noisy_top_k, capacity=None,
                                     k=1))(logits, noise_logits=noise)
  np.testing.assert_array_equal(plan.expert_index[0, :, 0], [0, 2])
  np.testing.assert_allclose(plan.combine_weights[0, :, 0], [1, 1])
  # Importance [1, 0, 1]: Var 2/9, Mean² 4/9 -> CV² 1/2.
  np.testing.assert_allclose(aux['importance_loss'], 0.5, rtol=1e-5)
  sd = math.log(2)
  # t0: e0 is in the top 1, so it must beat the next best (1); e1 and e2
  # must beat e0's 2. t1 mirrors t0.
  p_t0 = [_phi((2 - 1) / sd), _phi((1 - 2) / sd), _phi((0 - 2) / sd)]
  load = np.array(p_t0) + np.array(p_t0[::-1])
  want = np.var(load) / np.mean(load) ** 2
  np.testing.assert_allclose(aux['load_loss'], want, rtol=1e-5)


def test_noisy_top_k_losses_gradient():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(1, 6, 4)), jnp.float32)
  noise = jnp.asarray(rng.normal(size=(1, 6, 4)) * 0.3, jnp.float32)

  def f(lg, nz):
    _, aux = noisy_topk.noisy_top_k(lg, capacity=None, k=2, noise_logits=nz)
    return aux['importance_loss'] + aux['load_loss']

  # jit: check_grads calls f many times, and eager dispatch dominated.
  check_grads(jax.jit(f), (logits, noise), order=1, modes=['rev'], eps=1e-3,
              atol=2e-3, rtol=2e-3)


def test_noise_only_in_training():
  logits = jnp.zeros((1, 16, 4)) + jnp.arange(4) * 0.1
  noise = jnp.zeros((1, 16, 4))
  route = functools.partial(noisy_topk.noisy_top_k, capacity=None, k=1,
                            noise_logits=noise)
  clean, _ = route(logits)
  assert bool(jnp.all(clean.expert_index == 3))
  noisy, _ = route(logits, key=jax.random.key(0))
  assert len(np.unique(noisy.expert_index)) > 1


# ------------------------------------------------- shared + fine-grained --


def test_shared_experts_add_a_dense_ffn():
  d, f, e = 8, 16, 4
  params = moe_params(0, d, f, e)
  rng = np.random.default_rng(1)
  shared = {'shared_wi': jnp.asarray(rng.normal(size=(d, 2 * f)) / 3,
                                     jnp.float32),
            'shared_wo': jnp.asarray(rng.normal(size=(2 * f, d)) / 5,
                                     jnp.float32)}
  x = jnp.asarray(rng.normal(size=(2, 8, d)), jnp.float32)
  base = MoEConfig(num_experts=e, d_ff=f)
  y0, _ = moe_apply(params, x, base)
  y1, _ = moe_apply({**params, **shared}, x,
                    MoEConfig(num_experts=e, d_ff=f, num_shared_experts=2))
  dense = jax.nn.gelu(x @ shared['shared_wi']) @ shared['shared_wo']
  np.testing.assert_allclose(y1 - y0, dense, rtol=1e-5, atol=1e-5)


def _expert_counts(moe: MoEConfig, d: int):
  layer = nnx.eval_shape(lambda: MoELayer(moe, d, rngs=nnx.Rngs(0)))
  state = nnx.state(layer, nnx.Param)
  total, active = count_params(state, moe.top_k, moe.num_experts)
  router = d * moe.num_experts
  return total - router, active - router


@pytest.mark.parametrize('m,shared', [(2, 0), (4, 0), (4, 2)])
def test_fine_grained_split_keeps_total_and_active_params(m, shared):
  d = 16
  c = ml_collections.ConfigDict(dict(
      num_experts=8, top_k=2, d_ff=64, router='gshard', num_shared_experts=0))
  base = MoEConfig(**c)
  split_experts(c, m, num_shared=shared)
  fine = MoEConfig(**c)
  assert (fine.num_experts, fine.top_k, fine.d_ff) == (
      8 * m - shared, 2 * m - shared, 64 // m)
  assert fine.router == 'topk' and fine.num_shared_experts == shared
  assert _expert_counts(fine, d) == _expert_counts(base, d)


def test_bad_split_is_one_line():
  c = ml_collections.ConfigDict(dict(
      num_experts=8, top_k=1, d_ff=64, router='switch', num_shared_experts=0))
  with pytest.raises(UserInputError, match='dividing moe.d_ff=64'):
    split_experts(c, 3)
  with pytest.raises(UserInputError, match='num_shared'):
    split_experts(c, 2, num_shared=2)


@pytest.mark.parametrize('kwargs,match', [
    (dict(router='noisy_topk', num_experts=2, top_k=2), 'top_k < num_experts'),
    (dict(router_options={'noisy_topk': {'importance_weight': 0.1}}),
     "router='noisy_topk'"),
    (dict(num_shared_experts=-1), 'num_shared_experts'),
])
def test_bad_zoo_config_is_one_line(kwargs, match):
  with pytest.raises(UserInputError, match=match) as e:
    MoEConfig(**kwargs)
  assert '\n' not in str(e.value)
