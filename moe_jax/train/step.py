"""Pure, module-level train and eval steps (jit them with their statics)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from moe_jax.layers.moe import RouterBias
from moe_jax.train import accumulate
from moe_jax.train.lora import adapters as lora


@struct.dataclass
class TrainState:
  """Everything that changes during training; the checkpoint's content.

  The data position is `step` itself (batches are a function of the step),
  and the routing noise of step i is fold_in(rng, i), so nothing else is
  needed to resume exactly.
  """

  step: jax.Array  # int32 scalar: optimizer steps taken.
  params: nnx.State
  opt_state: optax.OptState
  rng: jax.Array  # uint32 [2] base key.

  @staticmethod
  def create(model: nnx.Module, **fields) -> TrainState:
    """TrainState, or RoutedTrainState when `model` has router state.

    The one place that tells the two apart: everything else asks the state
    for its router_states() and lets it move them (moved_router).
    """
    router_state = nnx.state(model, RouterBias)
    if jax.tree.leaves(router_state):
      return RoutedTrainState(**fields, router_state=router_state)
    return TrainState(**fields)

  def router_states(self) -> dict[str, nnx.State]:
    """The model's variables besides params, by field name (nnx.merge takes
    them after the params; replace(**them) sets them): none here."""
    return {}

  def moved_router(self, graphdef: nnx.GraphDef, aux: dict[str, Any],
                   full) -> TrainState:
    """This state with its router state moved by a step's load: none here."""
    del graphdef, aux, full
    return self


@struct.dataclass
class RoutedTrainState(TrainState):
  """TrainState plus router state the optimizer never touches.

  Used only by models that have such state (loss-free balancing biases), so
  every other model keeps TrainState and its checkpoint layout unchanged.
  """

  router_state: nnx.State  # RouterBias variables, [E] per MoE layer.

  def router_states(self) -> dict[str, nnx.State]:
    return {'router_state': self.router_state}

  def moved_router(self, graphdef: nnx.GraphDef, aux: dict[str, Any],
                   full) -> RoutedTrainState:
    """Biases moved by this step's load (after it, never by the optimizer).

    full: params -> the model's parameters (see lm_loss).
    """
    model = nnx.merge(graphdef, full(self.params), self.router_state)
    model.update_router_biases(jax.lax.stop_gradient(aux))
    return self.replace(router_state=nnx.state(model, RouterBias))


def lm_loss(params: nnx.State, graphdef: nnx.GraphDef, batch: dict[str, Any],
            *, train: bool, key: jax.Array | None,
            router_states: dict[str, nnx.State] | None = None, full=None,
            **model_kwargs):
  """Mean next-byte cross-entropy plus the MoE auxiliary losses.

  router_states: the state's router_states() (loss-free balancing biases).
  full: optional params -> the model's parameters (LoRA's merge), applied
  inside the function so gradients are taken with respect to `params`.
  model_kwargs: more arguments of the model's call (gradient accumulation's
  return_routing and balance_fraction: accumulate.py).

  Returns:
    (loss, (cross_entropy, aux)) where aux holds the per-layer MoE metrics.
  """
  if full is not None:
    params = full(params)
  model = nnx.merge(graphdef, params, *(router_states or {}).values())
  logits, aux = model(batch['inputs'], train=train, key=key, **model_kwargs)
  ce = optax.softmax_cross_entropy_with_integer_labels(
      logits, batch['targets']).mean()
  return ce + aux['aux_loss'], (ce, aux)


def train_step(state: TrainState, batch: dict[str, Any],
               frozen: nnx.State | None = None, *, graphdef: nnx.GraphDef,
               tx: optax.GradientTransformation, lora_scale: float = 0.0,
               grad_accum_steps: int = 1):
  """One AdamW step on loss = CE + α·load_balance + c_z·z (summed over layers).

  With `frozen` (LoRA), state.params are the adapters and the model runs on
  lora.merge(frozen, adapters, lora_scale); only the adapters are
  differentiated and updated.

  grad_accum_steps: N > 1 runs the batch as N micro-batches in one scan,
  with the balance statistics of the whole batch (accumulate.py); 1: the
  whole batch at once.

  Returns:
    (new state, metrics dict of scalars and per-expert vectors). Its
    'state_finite' is True when the loss, gradient norm and every array of
    the new state are finite.
  """
  key = jax.random.fold_in(state.rng, state.step)
  full = lambda p: p if frozen is None else lora.merge(frozen, p, lora_scale)
  if grad_accum_steps == 1:
    grad_fn = jax.value_and_grad(lm_loss, has_aux=True)
    (loss, (ce, aux)), grads = grad_fn(state.params, graphdef, batch,
                                       train=True, key=key, full=full,
                                       router_states=state.router_states())
  else:
    def loss_fn(params, micro_batch, micro_key, **model_kwargs):
      return lm_loss(params, graphdef, micro_batch, train=True, key=micro_key,
                     full=full, router_states=state.router_states(),
                     **model_kwargs)

    # Traced arrays only: the merge reads the model's static config.
    config = nnx.merge(graphdef, full(state.params),
                       *state.router_states().values()).config
    (loss, (ce, aux)), grads = accumulate.loss_and_grads(
        loss_fn, state.params, batch, key, steps=grad_accum_steps,
        moe=config.moe if config.num_moe_layers else None)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.moved_router(graphdef, aux, full).replace(
      step=state.step + 1, params=params, opt_state=opt_state)
  checked = (new_state.params, new_state.opt_state,
             *new_state.router_states().values())
  grad_norm = optax.tree.norm(grads)
  # The host reads this before saving: the loss above was computed before
  # the update, so it can be finite while the state a checkpoint would hold
  # is not. Computed here, it costs no extra host round trip.
  finite = jnp.all(jnp.stack(
      [jnp.isfinite(loss), jnp.isfinite(grad_norm)] +
      [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(checked)]))
  metrics = {'loss': loss, 'cross_entropy': ce, 'grad_norm': grad_norm,
             'state_finite': finite, **aux}
  return new_state, metrics


# Per-layer routing metrics averaged over MoE layers at eval; a dense model
# reports zeros. dropped_fraction is [K] per layer and is averaged over k too.
EVAL_ROUTING_METRICS = ('unrouted_fraction', 'dropped_fraction',
                        'max_violation', 'dead_expert_fraction',
                        'router_logit_max', 'router_logsumexp')


def eval_step(params: nnx.State, batch: dict[str, Any],
              router_states: dict[str, nnx.State] | None = None, *,
              graphdef: nnx.GraphDef) -> dict[str, jax.Array]:
  """Summed cross-entropy (nats), token count and routing metrics of a batch.

  Runs at the eval capacity factor. Routing metrics are means over the MoE
  layers (see EVAL_ROUTING_METRICS). router_states: the state's
  router_states().
  """
  _, (ce, aux) = lm_loss(params, graphdef, batch, train=False, key=None,
                         router_states=router_states)
  count = jnp.asarray(batch['targets'].size, jnp.float32)
  out = {'ce_sum': ce * count, 'count': count}
  for name in EVAL_ROUTING_METRICS:
    per_layer = [jnp.mean(v) for k, v in aux.items()
                 if k.endswith('/' + name)]
    out[name] = jnp.mean(jnp.stack(per_layer or [jnp.zeros(())]))
  return out
