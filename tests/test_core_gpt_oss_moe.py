"""gpt-oss's MoE in the core: the clamped SwiGLU by hand, moe.use_bias (a
router logit bias and biases on every expert projection) against a float64
numpy transcription of transformers' GptOssMLP in every dispatcher, float64
gradients against central differences (the tiled layouts' custom VJPs
included), and the one-line refusal.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.core.config import MoEConfig
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.core.experts import mlp
from moe_jax.core.moe import moe_apply
from moe_jax.errors import UserInputError
from moe_jax.layers.moe import MoELayer

D, F, E, K = 6, 5, 4, 2
B, L = 2, 5
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _config(dispatcher='dropless'):
  # eval cf = E/K with min_capacity L: C >= S, nothing is dropped.
  return MoEConfig(num_experts=E, top_k=K, d_ff=F, router='topk',
                   expert_type='swiglu_clamped', use_bias=True,
                   dispatcher=dispatcher, eval_capacity_factor=E / K,
                   min_capacity=L)


def _params(seed=0):
  rng = np.random.default_rng(seed)
  shapes = {'router_kernel': (D, E), 'router_bias_logits': (E,),
            'wi_gate': (E, D, F), 'wi': (E, D, F), 'wo': (E, F, D),
            'bi_gate': (E, F), 'bi': (E, F), 'bo': (E, D)}
  p = {k: rng.normal(size=s) for k, s in shapes.items()}
  for name in ('wi_gate', 'wi'):  # Pre-activations of std ~4: clamps bite.
    p[name] *= 4 / np.sqrt(D)
  p['wo'] /= np.sqrt(F)
  return p


def _x(seed=1):
  return np.random.default_rng(seed).normal(size=(B, L, D))


def _np_act(gate, up):
  gate = np.minimum(gate, mlp.CLAMP_LIMIT)
  up = np.clip(up, -mlp.CLAMP_LIMIT, mlp.CLAMP_LIMIT)
  return (up + 1) * gate / (1 + np.exp(-mlp.CLAMP_ALPHA * gate))


def _reference(p, x):
  """transformers' GptOssMLP in float64 numpy: top-k of x·Wᵀ + b, softmax
  over the chosen k, each expert (act(x·W_gu + b_gu)·W_d + b_d) weighted."""
  t = x.reshape(-1, D)
  logits = t @ p['router_kernel'] + p['router_bias_logits']
  top = np.argsort(-logits, axis=-1, kind='stable')[:, :K]
  chosen = np.take_along_axis(logits, top, -1)
  w = np.exp(chosen - chosen.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out, pre = np.zeros_like(t), []
  for n in range(t.shape[0]):
    for j, e in enumerate(top[n]):
      gate = t[n] @ p['wi_gate'][e] + p['bi_gate'][e]
      up = t[n] @ p['wi'][e] + p['bi'][e]
      pre += [gate, up]
      out[n] += w[n, j] * (_np_act(gate, up) @ p['wo'][e] + p['bo'][e])
  return out.reshape(x.shape), top, np.concatenate(pre)


def test_clamped_swiglu_by_hand():
  gate = jnp.array([-3.0, 0.0, 2.0, 9.0])
  up = jnp.array([-8.0, 5.0, 0.5, 8.0])
  sig = lambda z: 1 / (1 + np.exp(-z))
  # up -8 -> -7 and 8 -> 7; gate 9 -> 7 (the gate has no lower clamp).
  want = [(-7 + 1) * -3 * sig(-3 * 1.702), 0.0, (0.5 + 1) * 2 * sig(3.404),
          (7 + 1) * 7 * sig(7 * 1.702)]
  got = mlp.clamped_swiglu_act((gate, up))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  # Past a clamp the input gets no gradient, as with torch's clamp.
  d_gate, d_up = jax.grad(lambda g, u: jnp.sum(mlp.clamped_swiglu_act((g, u))),
                          argnums=(0, 1))(gate, up)
  assert d_up[0] == d_up[3] == 0 and d_gate[3] == 0
  assert d_gate[2] != 0 and d_up[2] != 0


@pytest.mark.parametrize('dispatcher', sorted(DISPATCHERS))
def test_biased_moe_matches_float64_reference(dispatcher):
  p, x = _params(), _x()
  want, top, pre = _reference(p, x)
  # Not degenerate: the router bias changes some choice, the clamps clip.
  plain = np.argsort(-(x.reshape(-1, D) @ p['router_kernel']), -1,
                     kind='stable')[:, :K]
  assert (np.sort(plain) != np.sort(top)).any()
  assert np.mean(np.abs(pre) > mlp.CLAMP_LIMIT) > 0.02
  config = _config(dispatcher)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
  y, _ = _jit(lambda p, x: moe_apply(p, x, config))(
      params, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize('dispatcher', ['einsum', 'dropless', 'fused'])
def test_gradients_match_central_differences(dispatcher):
  config = _config(dispatcher)
  p, x_np = _params(), _x()
  r = np.random.default_rng(2).normal(size=x_np.shape)
  # Preconditions: no pre-activation within 0.05 of a clamp and no routing
  # near a tie, so the differences below cross no kink and no decision.
  _, _, pre = _reference(p, x_np)
  assert np.min(np.abs(np.abs(pre) - mlp.CLAMP_LIMIT)) > 0.05
  logits = np.sort(x_np.reshape(-1, D) @ p['router_kernel'] +
                   p['router_bias_logits'], -1)
  assert np.min(np.diff(logits[..., -K - 1:], axis=-1)) > 0.05
  with jax.enable_x64(True):
    params = {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}
    x = jnp.asarray(x_np, jnp.float64)

    @_jit
    def value_and_grad(params):
      return jax.value_and_grad(
          lambda q: jnp.sum(moe_apply(q, x, config)[0] * r))(params)

    _, grads = value_and_grad(params)
    f = lambda q: float(value_and_grad(q)[0])
    rng, eps = np.random.default_rng(3), 1e-3
    # The bias terms and the expert weights (the router kernel's gradient
    # is tests/test_core_layer.py's); one random direction each.
    for name in sorted(set(p) - {'router_kernel'}):
      v = rng.normal(size=p[name].shape)
      plus = {**params, name: params[name] + eps * v}
      minus = {**params, name: params[name] - eps * v}
      fd = (f(plus) - f(minus)) / (2 * eps)
      analytic = float(np.sum(np.asarray(grads[name]) * v))
      np.testing.assert_allclose(analytic, fd, rtol=1e-3, atol=1e-4,
                                 err_msg=name)
      assert abs(analytic) > 1e-3, name


def test_biases_are_off_by_default_and_zero_at_init():
  from flax import nnx  # pylint: disable=g-import-not-at-top
  plain = MoELayer(MoEConfig(num_experts=E, d_ff=F), D, rngs=nnx.Rngs(0))
  assert not set(plain.params()) & {'bi', 'bi_gate', 'bo',
                                    'router_bias_logits'}
  layer = MoELayer(_config(), D, rngs=nnx.Rngs(0))
  shapes = {k: v.shape for k, v in layer.params().items()}
  assert (shapes['bi'], shapes['bi_gate'], shapes['bo'],
          shapes['router_bias_logits']) == ((E, F), (E, F), (E, D), (E,))
  assert all(not np.any(layer.params()[k]) for k in ('bi', 'bo'))


def test_bias_with_a_token_mixing_router_is_one_line():
  with pytest.raises(UserInputError, match="use_bias=True needs a router "
                     "that picks experts per token, but router='soft'") as e:
    MoEConfig(num_experts=E, d_ff=F, router='soft', use_bias=True)
  assert '\n' not in str(e.value)
