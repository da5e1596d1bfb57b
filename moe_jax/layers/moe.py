"""MoELayer: a thin Flax NNX module over the pure `moe_apply`.

It owns the parameters (with logical axis names for sharding) and nothing
else; all routing, dispatch and loss math lives in moe_jax.core.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.core.config import MoEConfig
from moe_jax.core.experts import PARAM_AXES
from moe_jax.core.moe import moe_apply
from moe_jax.layers.params import param, scaled_init

# Logical axis names; the sharding rules map them to mesh axes in one place.
ROUTER_AXES = ('embed', None)  # Small; replicated everywhere.
EXPERT_IN_AXES = PARAM_AXES['wi']  # wi, wi_gate [E, D, F]
EXPERT_OUT_AXES = PARAM_AXES['wo']  # wo [E, F, D]


class MoELayer(nnx.Module):
  """Router -> dispatcher -> experts -> combine, configured by MoEConfig.

  Call it as `y, aux = layer(x, train=..., key=...)` with x [..., L, D];
  see moe_jax.core.moe.moe_apply for the contract.
  """

  def __init__(self, config: MoEConfig, d_model: int, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    self.config = config
    self.dtype = dtype
    e, d, f = config.num_experts, d_model, config.d_ff
    init = scaled_init(config.init_scale, batch_axes=(0,))
    self.router_kernel = param(rngs, scaled_init(config.init_scale), (d, e),
                               ROUTER_AXES)
    self.wi = param(rngs, init, (e, d, f), EXPERT_IN_AXES)
    if config.expert_type == 'swiglu':
      self.wi_gate = param(rngs, init, (e, d, f), EXPERT_IN_AXES)
    self.wo = param(rngs, init, (e, f, d), EXPERT_OUT_AXES)

  def params(self) -> dict[str, jax.Array]:
    names = ['router_kernel', 'wi', 'wo']
    if self.config.expert_type == 'swiglu':
      names.append('wi_gate')
    return {name: getattr(self, name)[...] for name in names}

  def __call__(self, x: jax.Array, *, train: bool = False,
               key: jax.Array | None = None, return_routing: bool = False):
    return moe_apply(self.params(), x, self.config, train=train, key=key,
                     dtype=self.dtype, return_routing=return_routing)
