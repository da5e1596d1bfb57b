"""The gathered layout's expert loop (core/experts/gathered_mlp.py) on its own.

A hand-computed case with a token in two experts, one in none and an empty
row; the custom VJP against numerical differences. Its equivalence with the
other dispatchers, drops included, is in test_core_dispatch.py.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.test_util import check_grads

from moe_jax.core.dispatch.base import ExpertInputs
from moe_jax.core.experts import EXPERT_FNS
from moe_jax.core.experts.gathered_mlp import gathered_mlp


def _linear_pre(p, x):
  return x @ p['wi']


def test_hand_computed_sums():
  # T = 3 tokens of width 1, E = 2 experts of width 1 with act = identity,
  # so expert e maps x to x·wi[e]·wo[e]: 2x and -3x.
  params = {'wi': jnp.array([[[2.0]], [[3.0]]]),
            'wo': jnp.array([[[1.0]], [[-1.0]]])}
  x = jnp.array([[1.0], [2.0], [3.0]])
  rows = jnp.array([[0, 2], [0, 3]], jnp.int32)  # Row (1, 1) is empty.
  weights = jnp.array([[0.5, 1.0], [2.0, 9.0]])  # 9.0 must not be used.
  out = gathered_mlp(_linear_pre, lambda h: h, params,
                     ExpertInputs(x, rows=rows, row_weights=weights))
  # Token 0: 0.5·2·1 + 2·(-3·1) = -5; token 1 in no row; token 2: 1·2·3.
  np.testing.assert_allclose(out, [[-5.0], [0.0], [6.0]])


def test_gradients_match_numerical_differences():
  rng = np.random.default_rng(0)
  t, d, f, e, n = 5, 3, 4, 3, 3
  params = {'wi': rng.normal(size=(e, d, f)) / np.sqrt(d),
            'wi_gate': rng.normal(size=(e, d, f)) / np.sqrt(d),
            'wo': rng.normal(size=(e, f, d)) / np.sqrt(f)}
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
  x = jnp.asarray(rng.normal(size=(t, d)), jnp.float32)
  # Token 1 in two experts, token 4 in none, two empty rows (index t).
  rows = jnp.array([[0, 1, t], [1, 2, 3], [t, 2, 0]], jnp.int32)
  weights = jnp.asarray(rng.uniform(0.1, 1.0, size=(e, n)), jnp.float32)
  # Blocks of 2 rows sorted by expert: expert 0 has 3 rows (blocks 0-1,
  # one padding row), expert 1 none, expert 2 one (block 2); block 3 is
  # past the used ones. Token 0 is in two experts, token 1 in none.
  blocked = dict(rows=jnp.array([[0, 2], [4, t], [0, t], [t, t]], jnp.int32),
                 block_expert=jnp.array([0, 0, 2, 2], jnp.int32),
                 group_sizes=jnp.array([3, 0, 1], jnp.int32))
  blocked_weights = jnp.asarray(rng.uniform(0.1, 1.0, size=(4, 2)),
                                jnp.float32)
  for name in ('gelu', 'swiglu'):
    fn = EXPERT_FNS[name]

    def f(params, x, weights, fn=fn):
      return fn(params, ExpertInputs(x, rows=rows, row_weights=weights))

    def g(params, x, weights, fn=fn):
      return fn(params, ExpertInputs(x, row_weights=weights, **blocked))

    p = params if name == 'swiglu' else {k: params[k] for k in ('wi', 'wo')}
    # jit: check_grads calls its function many times; eager is slow.
    check_grads(jax.jit(f), (p, x, weights), order=1, modes=['rev'],
                eps=1e-2, atol=2e-2, rtol=2e-2)
    check_grads(jax.jit(g), (p, x, blocked_weights), order=1, modes=['rev'],
                eps=1e-2, atol=2e-2, rtol=2e-2)
