"""Router replay: run a model with the expert choices a routing trace
recorded, instead of its routers' own.

The router still scores every token, so the gates, balance losses and
metrics are the replaying model's own and the gates take gradients; only
which experts a token goes to is fixed (Megatron-LM and NeMo replay routing
this way to take the router's decisions out of a comparison, e.g. between
a model and its later self). Capacity still applies: a replayed choice can
be dropped.

Routing drift (`routing_drift`): the loss of a model routed as an earlier
checkpoint of the same run routed the same tokens, against its own routing.

Shape letters: N traced tokens, M MoE layers, K choices, B, L a batch.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from moe_jax.analysis.trace import RoutingTrace
from moe_jax.core.moe import check_replayable
from moe_jax.errors import UserInputError


def check_compatible(trace: RoutingTrace, model) -> None:
  """A one-line error unless the model's router replays and the trace's
  layers, E and K are the model's."""
  blocks = [i for i, b in enumerate(model.blocks) if b.is_moe]
  moe = model.config.moe
  check_replayable(moe)
  theirs = (list(map(int, trace.layers)), trace.num_experts, trace.top_k)
  ours = (blocks, moe.num_experts, moe.top_k)
  if theirs != ours:
    raise UserInputError(
        f'the trace was recorded from a model of another shape (MoE blocks, '
        f'E, K = {theirs}; this model: {ours}); replay a trace of a model '
        'with the same layers, experts and top_k.')


def replay_choices(trace: RoutingTrace, batch_size: int,
                   seq_len: int) -> list[dict[int, np.ndarray]]:
  """The trace's choices per batch: {MoE block: int32 [B, L, K]}, in the
  order the batches were traced (a trace is N = batches·B·L tokens)."""
  per_batch = batch_size * seq_len
  num_tokens = trace.expert.shape[1]
  if num_tokens % per_batch:
    raise UserInputError(
        f'the trace holds {num_tokens} tokens, not a whole number of batches '
        f'of {batch_size} x {seq_len}; replay with the batch shape it was '
        'recorded with.')
  k = trace.expert.shape[-1]
  return [{int(layer): trace.expert[m, b * per_batch:(b + 1) * per_batch]
           .reshape(batch_size, seq_len, k).astype(np.int32)
           for m, layer in enumerate(trace.layers)}
          for b in range(num_tokens // per_batch)]


def _loss_and_choices(model, inputs, targets, replay):
  logits, aux = model(inputs, return_routing=True, replay=replay)
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  choices = {i: r['plan'].expert_index for i, r in aux['routing'].items()}
  return jnp.mean(ce), choices


def routing_drift(model, trace: RoutingTrace,
                  batches: Iterable[dict[str, np.ndarray]],
                  layers: Iterable[int] | None = None) -> dict:
  """The model's loss routed by itself and as the trace routed, on the
  traced batches (in the traced order).

  Args:
    model: a TransformerLM of the trace's shape.
    trace: the recorded routing.
    batches: the batches the trace was recorded on, in that order.
    layers: the MoE blocks to route as the trace did (default all); the
      others route themselves, so one layer's part of the drift shows.

  Returns:
    'own_loss' and 'replayed_loss' (mean nats per token), their difference
    'drift' (replayed − own), 'changed_fraction': the share of the
    trace's choices that the model no longer makes (at any rank), and
    'changed_by_layer': float [M], that share per MoE layer (trace order).
  """
  check_compatible(trace, model)
  batches = list(batches)
  first = np.asarray(batches[0]['inputs'])
  choices = replay_choices(trace, *first.shape)
  if len(choices) != len(batches):
    raise UserInputError(
        f'the trace holds {len(choices)} batches but {len(batches)} were '
        'given; pass the batches it was recorded on.')
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, x, y, r: _loss_and_choices(
      nnx.merge(graphdef, s), x, y, r))
  own, replayed = [], []
  changed = {layer: 0 for layer in choices[0]}
  total = dict(changed)
  forced = set(trace.layers.tolist() if layers is None else layers)
  if not forced <= set(trace.layers.tolist()):
    raise UserInputError(
        f'layers={sorted(forced)} names blocks the trace does not hold (its '
        f'MoE blocks: {trace.layers.tolist()}); pick among those.')
  for batch, replay in zip(batches, choices):
    x = np.asarray(batch['inputs'], np.int32)
    y = np.asarray(batch['targets'], np.int32)
    loss, mine = forward(state, x, y, None)
    own.append(float(loss))
    replayed.append(float(forward(
        state, x, y, {i: c for i, c in replay.items() if i in forced})[0]))
    for layer, recorded in replay.items():
      k = recorded.shape[-1]
      a = np.asarray(mine[layer]).reshape(-1, k)
      b = recorded.reshape(-1, k)
      # A recorded choice is kept if the model picks that expert at any rank.
      kept = (b[:, :, None] == a[:, None, :]).any(-1)
      changed[layer] += int(np.sum(~kept))
      total[layer] += kept.size
  own_loss, replayed_loss = float(np.mean(own)), float(np.mean(replayed))
  return {'own_loss': own_loss, 'replayed_loss': replayed_loss,
          'drift': replayed_loss - own_loss,
          'changed_fraction': sum(changed.values()) / sum(total.values()),
          'changed_by_layer': np.asarray([changed[i] / total[i]
                                          for i in changed])}
