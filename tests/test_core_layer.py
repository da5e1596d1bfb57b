"""MoELayer / moe_apply: gradients, transforms, dtypes, config errors, axes."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.core.routing import switch as switch_lib
from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply
from moe_jax.layers.moe import MoELayer

D, F, E = 6, 8, 4  # Model width, expert width, experts (all distinct).
B, L = 2, 6

# Tiny shapes: XLA's backend optimisations cost more compile time than they
# save at run time, and compiles dominate these tests.
_jit = functools.partial(
    jax.jit, compiler_options={'xla_backend_optimization_level': 0})


def _config(**kw):
  base = dict(num_experts=E, d_ff=F, min_capacity=1)
  base.update(kw)
  return MoEConfig(**base)


def _np_params(seed, router_scale=1.0, expert_type='gelu'):
  rng = np.random.default_rng(seed)
  shapes = {'router_kernel': (D, E), 'wi': (E, D, F), 'wo': (E, F, D)}
  if expert_type == 'swiglu':
    shapes['wi_gate'] = (E, D, F)
  params = {k: rng.normal(size=s) / np.sqrt(s[-2]) for k, s in shapes.items()}
  params['router_kernel'] *= router_scale
  return params


def _np_inputs(seed, shape=(B, L, D)):
  rng = np.random.default_rng(seed)
  return rng.normal(size=shape), rng.normal(size=shape)


# ------------------------------------------------- (a) finite differences

# Drops happen in both cases (capacity 1 and 2 for 6 tokens and 4 experts),
# and the aux losses are weighted so their gradients are checked too. The
# seeds are ones whose routing has no near-ties (checked in the test).
_FD_CASES = {
    'switch_train': (_config(router='switch', capacity_factor=0.5,
                             load_balance_weight=0.1, z_loss_weight=0.01),
                     True, 10),
    'gshard_eval': (_config(router='gshard', top_k=2, eval_capacity_factor=0.5,
                            load_balance_weight=0.1, z_loss_weight=0.01,
                            expert_type='swiglu'), False, 25),
}


@pytest.mark.parametrize('case', list(_FD_CASES))
def test_gradients_match_central_differences(case):
  config, train, seed = _FD_CASES[case]
  k = config.top_k
  with jax.enable_x64(True):
    params = {name: jnp.asarray(v, jnp.float64) for name, v in
              _np_params(seed, router_scale=3.0,
                         expert_type=config.expert_type).items()}
    x, r = (jnp.asarray(a, jnp.float64) for a in _np_inputs(seed + 1))

    @_jit
    def value_and_grad(params, x):
      def loss(params, x):
        y, aux = moe_apply(params, x, config, train=train)
        return jnp.sum(y * r) + aux['aux_loss'], aux
      return jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)

    (_, aux), (grad_p, grad_x) = value_and_grad(params, x)
    assert grad_x.dtype == jnp.float64
    # Preconditions: tokens are dropped, and no token is near a routing tie:
    # the top K+1 logits keep a margin apart (the order of the top K matters
    # too, since first choices claim capacity first) that each step below
    # stays well inside, so the differences never cross a routing decision.
    assert np.sum(aux['dropped_fraction']) > 0
    x_np, kernel = np.asarray(x), np.asarray(params['router_kernel'])
    logits = np.sort(x_np @ kernel, -1)
    margin = np.min(np.diff(logits[..., -k - 1:], axis=-1))
    assert margin > 0.1

    def f(p, xx):
      return float(value_and_grad(p, xx)[0][0])

    rng = np.random.default_rng(12)
    # The router runs in float32 by design, so f carries ~1e-7 relative
    # rounding noise that the difference quotient divides by eps; 3e-3
    # balances that against the O(eps²) truncation error.
    eps = 3e-3
    # One random direction per input, so a wrong gradient in one weight
    # cannot hide behind a right one in another.
    for name in ['x'] + sorted(params):
      v = rng.normal(size=x.shape if name == 'x' else params[name].shape)
      shift = 0.0  # Expert weights do not move the logits.
      if name == 'x':
        shift = v @ kernel
      elif name == 'router_kernel':
        shift = x_np @ v
      assert np.max(np.abs(eps * shift)) < margin / 4, name
      if name == 'x':
        fd = (f(params, x + eps * v) - f(params, x - eps * v)) / (2 * eps)
        analytic = np.sum(np.asarray(grad_x) * v)
      else:
        plus = {**params, name: params[name] + eps * v}
        minus = {**params, name: params[name] - eps * v}
        fd = (f(plus, x) - f(minus, x)) / (2 * eps)
        analytic = np.sum(np.asarray(grad_p[name]) * v)
      # Observed agreement is ~1e-4 relative; a real gradient bug is O(1).
      np.testing.assert_allclose(analytic, fd, rtol=1e-3, atol=1e-4,
                                 err_msg=name)
      assert abs(analytic) > 1e-3, name  # Not vacuously 0 = 0.


# --------------------------------------------- (b) task gradient to router


@functools.partial(_jit, static_argnames=('configs',))
def _router_grads(params, x, r, configs):
  def loss(kernel, config):
    y, aux = moe_apply({**params, 'router_kernel': kernel}, x, config,
                       train=True)
    return jnp.sum(y * r) + aux['aux_loss']
  return [jax.grad(loss)(params['router_kernel'], c) for c in configs]


def test_switch_gate_passes_task_gradient_to_router_but_top1_softmax_not():
  no_aux = dict(load_balance_weight=0.0, z_loss_weight=0.0,
                capacity_factor=float(E))
  switch = _config(router='switch', **no_aux)
  topk1 = _config(router='topk', top_k=1, **no_aux)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in _np_params(20).items()}
  x, r = (jnp.asarray(a, jnp.float32) for a in _np_inputs(21))
  g_switch, g_topk = (np.asarray(g) for g in
                      _router_grads(params, x, r, configs=(switch, topk1)))
  # Switch's raw gate p[e] depends on the router, so the task teaches it.
  assert np.abs(g_switch).max() > 1e-3
  # A softmax over one logit is exactly 1: no task gradient at all.
  np.testing.assert_array_equal(g_topk, 0.0)


# ------------------------------------------- (c) jit / grad / vmap, (d) eager


@pytest.fixture(scope='module')
def switch_layer():
  # Capacity 1 per expert for 6 tokens: drops, so the check covers them.
  config = _config(router='switch', capacity_factor=0.5)
  layer = MoELayer(config, D, rngs=nnx.Rngs(0))
  x, r = (jnp.asarray(a, jnp.float32) for a in _np_inputs(30))
  y_eager, aux = layer(x, train=True)
  assert float(aux['dropped_fraction'][0]) > 0
  return layer, x, r, np.asarray(y_eager)


def test_layer_under_jit_grad_and_vmap_matches_eager(switch_layer):
  layer, x, r, y_eager = switch_layer
  graphdef, state = nnx.split(layer)

  @_jit
  def transformed(state, x):
    def forward(state, x):
      return nnx.merge(graphdef, state)(x, train=True)[0]

    y_jit = forward(state, x)
    # vmap over the batch: each call sees one [L, D] sequence = one group,
    # exactly the groups of the batched call.
    y_vmap = jax.vmap(forward, in_axes=(None, 0))(state, x)
    grad_state = jax.grad(lambda s: jnp.sum(forward(s, x) * r))(state)
    # The same gradient from the pure function on the params dict.
    grad_dict = jax.grad(lambda p: jnp.sum(
        moe_apply(p, x, layer.config, train=True)[0] * r))(layer.params())
    return y_jit, y_vmap, grad_state, grad_dict

  y_jit, y_vmap, grad_state, grad_dict = transformed(state, x)
  assert y_jit.shape == x.shape
  np.testing.assert_allclose(y_jit, y_eager, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y_vmap, y_eager, rtol=1e-5, atol=1e-6)
  for name in ('router_kernel', 'wi', 'wo'):
    got = np.asarray(grad_state[name][...])
    np.testing.assert_allclose(got, grad_dict[name], rtol=1e-5, atol=1e-6,
                               err_msg=name)
    assert np.abs(got).max() > 1e-4, name


def test_dispatcher_choice_does_not_change_layer_output(switch_layer):
  layer, x, _, y_eager = switch_layer
  # Same seed, same parameters; only the dispatcher differs.
  einsum = MoELayer(dataclasses.replace(layer.config, dispatcher='einsum'), D,
                    rngs=nnx.Rngs(0))
  for name, value in layer.params().items():
    np.testing.assert_array_equal(einsum.params()[name], value)
  y_einsum = _jit(lambda x: einsum(x, train=True)[0])(x)
  np.testing.assert_allclose(y_einsum, y_eager, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------ (e) config errors


@pytest.mark.parametrize('kwargs, words', [
    (dict(router='topk', top_k=5), ['top_k=5', 'num_experts=4']),
    (dict(capacity_factor=0.0), ['capacity_factor=0.0', '> 0']),
    (dict(capacity_factor=-1.0), ['capacity_factor=-1.0', '> 0']),
    (dict(eval_capacity_factor=0.0), ['eval_capacity_factor=0.0', '> 0']),
    (dict(eval_capacity_factor=-2.0), ['eval_capacity_factor=-2.0', '> 0']),
    (dict(router='hash_layer'),
     ['router', 'hash_layer', "'switch'", "'gshard'", "'topk'"]),
    (dict(dispatcher='ragged'),
     ['dispatcher', 'ragged', "'einsum'", "'index'", "'dropless'"]),
    (dict(router='switch', top_k=2), ["router='switch'", 'top_k=2',
                                      'top_k=1']),
    (dict(router='gshard', top_k=1), ["router='gshard'", 'top_k=2']),
    (dict(dispatcher='dropless', ep_buffer_factor=-1.0),
     ['ep_buffer_factor=-1.0', 'positive', 'or 0']),
    (dict(dispatcher='dropless', ep_overflow='skip'),
     ["ep_overflow='skip'", "'retry'", "'drop'"]),
    (dict(ep_buffer_factor=2.0), ['ep_buffer_factor=2.0', "'index'",
                                  'dropless']),
])
def test_bad_config_raises_value_error_naming_argument(kwargs, words):
  with pytest.raises(ValueError) as info:
    _config(**kwargs)
  message = str(info.value)
  for word in words:
    assert word in message, (word, message)


def test_good_config_values_are_accepted():
  # The error checks above must not reject the valid neighbours.
  for kw in (dict(router='topk', top_k=4), dict(router='gshard', top_k=2),
             dict(capacity_factor=0.01, eval_capacity_factor=1),
             dict(dispatcher='dropless'),
             dict(dispatcher='dropless', ep_buffer_factor=1.5),
             dict(ep_buffer_factor=0.0, ep_overflow='drop')):
    _config(**kw)


# ------------------------------------------------------------- (f) bf16


def _dot_generals(jaxpr):
  """Every dot_general equation in a jaxpr, including nested sub-jaxprs."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == 'dot_general':
      found.append(eqn)
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else [param]:
        inner = getattr(sub, 'jaxpr', sub)
        if hasattr(inner, 'eqns'):
          found.extend(_dot_generals(inner))
  return found


def test_bf16_layer_runs_in_bf16_with_float32_router(monkeypatch):
  config = _config(router='switch')
  layer = MoELayer(config, D, rngs=nnx.Rngs(1), dtype=jnp.bfloat16)
  x = jnp.asarray(_np_inputs(40)[0], jnp.bfloat16)

  # Spy on the router (config.router_fn looks it up at call time).
  seen = []
  real_router = switch_lib.switch_top1

  def spy(logits, **kw):
    seen.append(logits.dtype)
    return real_router(logits, **kw)

  monkeypatch.setattr(switch_lib, 'switch_top1', spy)
  forward = lambda x: layer(x, train=False)[0]
  y = _jit(forward)(x)
  assert y.dtype == jnp.bfloat16 and y.shape == x.shape
  assert np.isfinite(np.asarray(y, np.float32)).all()
  assert seen == [jnp.float32]

  # The router matmul (the one against the [D, E] kernel) is float32 in and
  # out, while the experts' matmuls really are bf16.
  dots = _dot_generals(jax.make_jaxpr(forward)(x).jaxpr)
  router_dots = [d for d in dots if d.invars[1].aval.shape == (D, E)]
  assert router_dots
  for dot in router_dots:
    assert [v.aval.dtype for v in dot.invars] == [jnp.float32, jnp.float32]
    assert dot.outvars[0].aval.dtype == jnp.float32
  assert any(v.aval.dtype == jnp.bfloat16 for d in dots for v in d.invars)

  # Same parameters in float32 give nearly the same output.
  y32 = _jit(lambda x: moe_apply(layer.params(), x, config)[0])(
      x.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(y, np.float32), y32, rtol=0.05,
                             atol=0.05)


# ---------------------------------------------------- (g) logical axes


@pytest.mark.parametrize('expert_type', ['gelu', 'swiglu'])
def test_parameters_carry_logical_axis_names(expert_type):
  layer = MoELayer(_config(expert_type=expert_type), D, rngs=nnx.Rngs(0))
  specs = nnx.get_partition_spec(nnx.state(layer))
  assert tuple(specs['wi'].get_value()) == ('expert', 'embed', 'mlp')
  assert tuple(specs['wo'].get_value()) == ('expert', 'mlp', 'embed')
  assert tuple(specs['router_kernel'].get_value()) == ('embed', None)
  if expert_type == 'swiglu':
    assert tuple(specs['wi_gate'].get_value()) == ('expert', 'embed', 'mlp')
  # And the shapes the names describe.
  assert layer.wi[...].shape == (E, D, F)
  assert layer.wo[...].shape == (E, F, D)
