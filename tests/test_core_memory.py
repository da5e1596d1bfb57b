"""The default dispatcher never materialises a [G, S, E, C] dispatch tensor.

The one-hot einsum formulation builds dispatch and combine tensors of
G·S·E·C elements, quadratic in the group size. The index dispatcher must
not: this test reads every array shape in the compiled forward + backward
program and fails if any reaches G·S·E·C elements. The einsum dispatcher is
the positive control that proves the check can see such a tensor. The
fused dispatcher goes further: not even the [E, G·C, D] capacity buffers of
tokens (K·cf copies of each) exist, only one expert's rows at a time.
"""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.core import MoEConfig, moe_apply
from moe_jax.core.capacity import expert_capacity

G, S, D, F, E = 2, 256, 16, 32, 16
SHAPE = re.compile(r'\b(?:f32|f16|bf16|s32|u32|pred|s8|u8)\[([0-9,]*)\]')


def _array_shapes(dispatcher: str) -> tuple[list[tuple[int, ...]], int]:
  """(every array shape in the compiled fwd+bwd, the capacity C)."""
  cfg = MoEConfig(num_experts=E, d_ff=F, dispatcher=dispatcher,
                  router='gshard', top_k=2,
                  router_options={'gshard': {'second_policy': 'all'}})
  # C at the train capacity factor, also for dropless (which has none).
  capacity = expert_capacity(S, E, 2, cfg.capacity_factor)
  rng = np.random.default_rng(0)
  params = {'router_kernel': jnp.asarray(rng.normal(size=(D, E)), jnp.float32),
            'wi': jnp.asarray(rng.normal(size=(E, D, F)), jnp.float32),
            'wo': jnp.asarray(rng.normal(size=(E, F, D)), jnp.float32)}
  x = jnp.asarray(rng.normal(size=(G, S, D)), jnp.float32)

  def loss(p, x):
    y, aux = moe_apply(p, x, cfg, train=True)
    return jnp.sum(y * y) + aux['aux_loss']

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
  shapes = [tuple(int(d) for d in dims.split(',') if d)
            for dims in SHAPE.findall(hlo.as_text())]
  return shapes, capacity


def _largest_array(dispatcher: str) -> tuple[int, int]:
  """(largest array elements in the compiled fwd+bwd, G·S·E·C)."""
  shapes, capacity = _array_shapes(dispatcher)
  return max(map(math.prod, shapes)), G * S * E * capacity


def _token_buffers(dispatcher: str) -> list[tuple[int, ...]]:
  """Arrays of tokens ([..., D]) as big as the capacity buffers E·G·C·D."""
  shapes, capacity = _array_shapes(dispatcher)
  return [s for s in shapes
          if s and s[-1] == D and math.prod(s) >= E * G * capacity * D]


def test_index_dispatch_has_no_dispatch_tensor():
  largest, dispatch_tensor = _largest_array('index')
  assert largest < dispatch_tensor / 4, (largest, dispatch_tensor)


def test_the_check_sees_the_einsum_dispatch_tensor():
  largest, dispatch_tensor = _largest_array('einsum')
  assert largest >= dispatch_tensor, (largest, dispatch_tensor)


def test_dropless_has_no_dispatch_tensor():
  largest, dispatch_tensor = _largest_array('dropless')
  assert largest < dispatch_tensor / 4, (largest, dispatch_tensor)


def test_fused_materialises_no_capacity_buffer_of_tokens():
  # The index dispatcher's [E, G·C, D] buffers are the positive control.
  assert _token_buffers('index')
  assert not _token_buffers('fused')
