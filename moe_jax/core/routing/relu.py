"""ReLU routing with an adaptive L1 penalty (ReMoE: Wang, Zhu and Chen,
ICLR 2025, "ReMoE: Fully Differentiable Mixture-of-Experts with ReLU
Routing"; code: thu-ml/ReMoE, ReLURouter).

Gates are g = ReLU(logits) [G, S, E]: a token goes to every expert whose gate
is positive, with that gate as its combine weight (no top-k, no
renormalisation), so the router is continuous and the number of experts per
token varies, 0..E. Sparsity comes from an L1 penalty whose weight λ moves
each step toward the target sparsity 1 - k/E (k = moe.top_k):

    λ ← λ · α^sign(S_target - S),   S = 1 - (experts per token) / E,

i.e. λ grows while tokens use more than k experts on average and shrinks
while they use fewer (ReMoE Eq. 8; λ0 = 1e-8 and α = 1.2 are the defaults of
the reference code's --moe-relu-l1-reg-coeff-init / -multiplier). The
penalty is the load-balanced L1 of ReMoE Eq. 10,

    L_reg = Σ_e f_e · P_e,  f_e = E·n_e / (k·T),  P_e = mean_t g_te,

with n_e the tokens routed to e in the batch (f_e is a count: no gradient),
so busy experts' gates are pushed down harder. It enters the training loss
as λ·L_reg ('router_loss', which moe_apply adds to aux_loss).

λ is router state: one float32 per MoE layer, outside the optimizer, moved
after each training step by update_state and checkpointed with the params,
like the sigmoid router's bias. The reference code keeps a single λ for the
whole model from the sparsity averaged over layers; here each layer has its
own λ from its own sparsity (per-layer control).

The plan has K = E choice slots, column e being expert e (as expert choice
lays it out), routed where g > 0. Unrouted slots take no capacity and no
dropless row (assign_slots and the dispatchers skip them), so compute follows
the real count; a dropless buffer is sized for the worst case, G·S·E rows,
E/k times a top-k router's. Because each column holds one expert, capacity
goes to an expert's tokens in sequence order: an earlier token never loses
its slot to a later one, so routing is lookahead-free even with drops.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from moe_jax.core import losses
from moe_jax.core import metrics as metrics_lib
from moe_jax.core.capacity import assign_slots
from moe_jax.core.plan import ROUTED, RoutingPlan
from moe_jax.core.routing import registry
from moe_jax.errors import UserInputError, require

# λ stays inside [LAMBDA_MIN, LAMBDA_MAX]: multiplying by α forever (a layer
# that cannot reach its target) would underflow to 0, where α^±1 can no
# longer move it, or overflow to inf and make the loss NaN.
LAMBDA_MIN, LAMBDA_MAX = 1e-30, 1e30


@dataclasses.dataclass(frozen=True)
class Options:
  """moe.router_options.relu.

  Attributes:
    l1_weight_init: λ0, the L1 weight at step 0 (ReMoE code: 1e-8; tiny, so
      early training is nearly dense and λ grows to what the target needs).
    l1_weight_multiplier: α > 1, λ's factor per step (ReMoE: 1.2); 1 keeps
      λ fixed at l1_weight_init (a fixed-weight L1 ablation).
  """

  l1_weight_init: float = 1e-8
  l1_weight_multiplier: float = 1.2

  def __post_init__(self):
    number = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    value = self.l1_weight_init
    require(number(value) and LAMBDA_MIN <= value <= LAMBDA_MAX,
            'router_options.relu.l1_weight_init', value,
            f'be in [{LAMBDA_MIN:g}, {LAMBDA_MAX:g}]', 'ReMoE uses 1e-8')
    value = self.l1_weight_multiplier
    require(number(value) and 1 <= value <= 10,
            'router_options.relu.l1_weight_multiplier', value,
            'be in [1, 10]', 'ReMoE uses 1.2; 1 keeps λ fixed')


def l1_balance_loss(gates: jax.Array, routed: jax.Array,
                    target_k: float) -> jax.Array:
  """ReMoE's load-balanced L1, Σ_e f_e·P_e (Eq. 10), pooled over the batch.

  Args:
    gates: float32 [..., E] ReLU gates.
    routed: bool [..., E] gates > 0.
    target_k: k, so f_e = 1 for every expert at the target sparsity with
      balanced load (and the loss is the mean gate sum per token / k).

  Returns:
    Scalar float32; its gradient reaches the gates only (f_e is a count).
  """
  e = gates.shape[-1]
  gates = gates.reshape(-1, e)
  t = gates.shape[0]
  count = jnp.sum(jax.lax.stop_gradient(routed).reshape(-1, e), axis=0)
  fraction = e * count.astype(jnp.float32) / (target_k * t)  # f_e
  return jnp.sum(fraction * jnp.mean(gates, axis=0))


def normalised_balance_loss(gates: jax.Array, routed: jax.Array) -> jax.Array:
  """The Switch loss E·Σ_e f_e·P_e on gates normalised per token.

  f_e is the share of routed choices that went to e, P_e the mean of
  g_te / Σ_e g_te (0 for a token with no expert). Scale-free in the gates,
  so it balances without pushing toward sparsity; it is what
  moe.load_balance_weight weights for this router (ReMoE itself relies on
  the f-weighted L1 alone: set load_balance_weight=0 for the paper's loss).
  """
  e = gates.shape[-1]
  gates = gates.reshape(-1, e)
  total = jnp.sum(gates, axis=-1, keepdims=True)
  probs = gates / jnp.where(total > 0, total, 1.0)
  count = jnp.sum(jax.lax.stop_gradient(routed).reshape(-1, e), axis=0)
  fraction = count / jnp.maximum(jnp.sum(count), 1)
  return e * jnp.sum(fraction * jnp.mean(probs, axis=0))


def relu_route(logits: jax.Array, *, capacity: int | None, target_k: float,
               l1_weight: jax.Array | float) -> tuple[RoutingPlan, dict]:
  """ReLU routing (ReMoE): every expert with a positive gate, K = E slots.

  Args:
    logits: float [G, S, E].
    capacity: C, or None for dropless.
    target_k: k, the experts per token the L1 weight steers toward.
    l1_weight: λ, a scalar or [1] (the layer's state); no gradient.

  Returns:
    (plan, aux). aux holds 'load_balance_loss' (normalised_balance_loss),
    'z_loss', 'router_loss' = λ·L_reg (already weighted), 'l1_loss' L_reg,
    'l1_weight' λ, the routing metrics ('dropped_fraction' [1]: the share of
    routed choices dropped, since columns are experts, not ranks),
    'experts_per_token' [E+1], 'experts_per_token_mean' and
    'experts_per_token_target' (k, which update_state reads).
  """
  logits = logits.astype(jnp.float32)
  g, s, e = logits.shape
  gates = jax.nn.relu(logits)  # [G, S, E]
  routed = gates > 0
  expert_index = jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32), (g, s, e))
  slot = assign_slots(expert_index, routed, e, capacity)
  kept = slot >= 0
  plan = RoutingPlan(expert_index=expert_index,
                     combine_weights=jnp.where(kept, gates, 0.0),
                     slot=slot, num_experts=e, capacity=capacity)
  l1_weight = jax.lax.stop_gradient(
      jnp.reshape(jnp.asarray(l1_weight, jnp.float32), ()))
  l1 = l1_balance_loss(gates, routed, target_k)
  total = jnp.sum(gates, axis=-1, keepdims=True)
  probs = gates / jnp.where(total > 0, total, 1.0)  # for entropy, top_gate
  aux = {
      'load_balance_loss': normalised_balance_loss(gates, routed),
      'z_loss': losses.z_loss(logits),
      **metrics_lib.routing_metrics(probs, expert_index, routed, kept),
      **metrics_lib.experts_per_token(routed),
      'experts_per_token_target': jnp.asarray(target_k, jnp.float32),
      'l1_loss': l1,
      'l1_weight': l1_weight,
      'router_loss': l1_weight * l1,
      ROUTED: jax.lax.stop_gradient(routed),  # Column e: gate_e > 0.
  }
  # Per k-rank drops mean nothing when columns are experts: report the share
  # of routed choices that were dropped (what the eval mean over ranks is for
  # a top-k router).
  dropped = jax.lax.stop_gradient(routed & ~kept)
  aux['dropped_fraction'] = jnp.reshape(
      jnp.sum(dropped) / jnp.maximum(jnp.sum(routed), 1), (1,)).astype(
          jnp.float32)
  return plan, aux


def update_l1_weight(l1_weight: jax.Array, mean_experts: jax.Array,
                     target_k: jax.Array, multiplier: float) -> jax.Array:
  """λ·α^sign(S_target - S) (ReMoE Eq. 8), kept in [LAMBDA_MIN, LAMBDA_MAX].

  S = 1 - mean/E and S_target = 1 - k/E, so sign(S_target - S) =
  sign(mean - k): more experts per token than k raises λ. At exactly k
  (sign 0) λ stays.
  """
  direction = jnp.sign(jax.lax.stop_gradient(mean_experts) - target_k)
  new = l1_weight * jnp.power(jnp.float32(multiplier), direction)
  return jnp.clip(new, LAMBDA_MIN, LAMBDA_MAX).astype(jnp.float32)


def _route(inputs, config, *, train, capacity, key, balance_fn):
  del train, key, balance_fn  # Deterministic; its losses pool the batch.
  return relu_route(inputs.logits, capacity=capacity, target_k=config.top_k,
                    l1_weight=inputs.params['relu_l1_weight'])


def _extra_params(config):
  # λ: state, not a parameter (no gradient, no weight decay, no Adam
  # moments), one per layer, starting at λ0.
  init = config.router_options.l1_weight_init
  return (registry.ExtraParam(
      'relu_l1_weight', lambda c, d: (1,),
      lambda key, shape, dtype: jnp.full(shape, init, dtype), (None,),
      trainable=False),)


def _update_state(state, aux, options):
  return {'relu_l1_weight': update_l1_weight(
      state['relu_l1_weight'], aux['experts_per_token_mean'],
      aux['experts_per_token_target'], options.l1_weight_multiplier)}


def _check(config) -> None:
  if config.balance_loss_scope != 'global':
    raise UserInputError(
        f"router='relu' pools its losses over the whole batch, but "
        f'balance_loss_scope={config.balance_loss_scope!r}; set '
        "balance_loss_scope='global'.")


SPEC = registry.register(registry.RouterSpec(
    name='relu', route=_route, options=Options, check=_check,
    extra_params=_extra_params, update_state=_update_state, ranked=False,
    batch_pooled=lambda config: (
        "router='relu' pools its f-weighted losses over the whole batch")))
