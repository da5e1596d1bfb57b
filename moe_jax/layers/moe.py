"""MoELayer: a thin Flax NNX module over the pure `moe_apply`.

It owns the parameters (with logical axis names for sharding) and nothing
else; all routing, dispatch and loss math lives in moe_jax.core.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.core.config import MoEConfig
from moe_jax.core.experts import PARAM_AXES, is_gated
from moe_jax.layers.params import param, scaled_init
# The layer sits above core and parallel: it runs the core's moe_apply with
# the expert-parallel exchange, which is the one-device path without a mesh.
from moe_jax.parallel.expert_parallel import parallel_moe_apply

# Logical axis names; the sharding rules map them to mesh axes in one place.
ROUTER_AXES = ('embed', None)  # Small; replicated everywhere.
EXPERT_IN_AXES = PARAM_AXES['wi']  # wi, wi_gate [E, D, F]
EXPERT_OUT_AXES = PARAM_AXES['wo']  # wo [E, F, D]


def _bias_names(config: MoEConfig) -> list[str]:
  """The bias parameters of moe.use_bias: the router's, then the experts'."""
  if not config.use_bias:
    return []
  gate = ['bi_gate'] if is_gated(config.expert_type) else []
  return ['router_bias_logits', 'bi', *gate, 'bo']


class RouterBias(nnx.Variable):
  """Router state: an extra array marked not trainable (the loss-free
  balancing bias [E] of a router spec, or the adaptive balance weight's
  scalars, core/adaptive_balance.py).

  Being no nnx.Param, it is outside the optimizer's tree (no gradient, no
  weight decay, no Adam moments); the train step carries it in
  RoutedTrainState.router_state and checkpoints save it with the rest.
  """


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
    self.router_kernel = param(rngs, scaled_init(config.init_scale),
                               (d, config.num_router_outputs), ROUTER_AXES)
    self.wi = param(rngs, init, (e, d, f), EXPERT_IN_AXES)
    if is_gated(config.expert_type):
      self.wi_gate = param(rngs, init, (e, d, f), EXPERT_IN_AXES)
    self.wo = param(rngs, init, (e, f, d), EXPERT_OUT_AXES)
    if config.use_bias:  # gpt-oss's biases, zero at init.
      zeros = nnx.initializers.zeros
      self.router_bias_logits = param(rngs, zeros,
                                      (config.num_router_outputs,), (None,))
      self.bi = param(rngs, zeros, (e, f), PARAM_AXES['bi'])
      if is_gated(config.expert_type):
        self.bi_gate = param(rngs, zeros, (e, f), PARAM_AXES['bi_gate'])
      self.bo = param(rngs, zeros, (e, d), ('expert', 'embed'))
    # The router's own arrays, as its spec declares them (RNG draws in
    # declaration order, after the experts': the order fixes the init).
    for extra in config.extra_params:
      shape = extra.shape(config, d)
      if extra.trainable:
        value = param(rngs, extra.init, shape, extra.axes)
      else:  # State draws nothing from the RNG.
        value = RouterBias(extra.init(None, shape, jnp.float32))
      setattr(self, extra.name, value)
    if config.num_shared_experts:
      fs = config.num_shared_experts * f
      dense = scaled_init(config.init_scale)
      self.shared_wi = param(rngs, dense, (d, fs), ('embed', 'mlp'))
      if is_gated(config.expert_type):
        self.shared_wi_gate = param(rngs, dense, (d, fs), ('embed', 'mlp'))
      self.shared_wo = param(rngs, dense, (fs, d), ('mlp', 'embed'))
      if config.shared_expert_gate:
        self.shared_gate = param(rngs, scaled_init(config.init_scale), (d, 1),
                                 ROUTER_AXES)

  def params(self) -> dict[str, jax.Array]:
    names = ['router_kernel', 'wi', 'wo']
    if is_gated(self.config.expert_type):
      names.append('wi_gate')
    names += _bias_names(self.config)
    if self.config.num_shared_experts:
      names += ['shared_wi', 'shared_wo']
      if is_gated(self.config.expert_type):
        names.append('shared_wi_gate')
      if self.config.shared_expert_gate:
        names.append('shared_gate')
    names += [extra.name for extra in self.config.extra_params]
    return {name: getattr(self, name)[...] for name in names}

  def __call__(self, x: jax.Array, *, train: bool = False,
               key: jax.Array | None = None, return_routing: bool = False,
               token_ids: jax.Array | None = None,
               replay: jax.Array | None = None,
               config: MoEConfig | None = None,
               balance_fraction: jax.Array | None = None):
    """config: another MoEConfig for these same parameters (e.g. another
    dispatcher or capacity, as decoding uses); None: the layer's own.
    balance_fraction: the whole step's f for a micro-batch (moe_apply)."""
    return parallel_moe_apply(self.params(), x, config or self.config,
                              train=train,
                              key=key, dtype=self.dtype,
                              return_routing=return_routing,
                              token_ids=token_ids, replay=replay,
                              balance_fraction=balance_fraction)

  def update_router_bias(self, aux: dict[str, jax.Array]) -> None:
    """Moves the router state (e.g. the bias by ±γ) from this layer's aux of
    one training step, by MoEConfig.update_state.

    Called by the train step after the forward pass, outside the gradient:
    the step selected with the old state, the next one with the new.
    """
    names = [p.name for p in self.config.extra_params if not p.trainable]
    new = self.config.update_state(
        {n: getattr(self, n)[...] for n in names}, aux)
    for name in names:
      getattr(self, name)[...] = new[name]
