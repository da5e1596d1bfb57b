"""Gradient accumulation with global-batch balance statistics.

`train.grad_accum_steps = N` splits each step's batch into N micro-batches
and runs them in one jitted `jax.lax.scan`, so only one micro-batch's
activations are alive at a time; the optimizer steps once, on the mean of
their gradients. The step equals the N = 1 step at the same batch up to
float rounding (tests/test_train_accumulate.py: loss, gradients, router
state and parameters after the update):

* Per-token losses (cross-entropy, z-loss, ...) are means over tokens. The
  micro-batches are equal, so the mean of their means is the batch's mean,
  and the mean of their gradients its gradient.
* The load-balance loss E·Σ_e f_e·P_e pools f (the share of the choices
  each expert got) and P (the mean router probability) over the batch, and
  the product of two pooled means is not the mean of per-micro-batch
  products. Computing it per micro-batch (`moe.balance_loss_scope=
  'micro_batch'`, which also splits by data shard) is what Qiu et al. 2025
  (arXiv 2501.11873) call the micro-batch balance loss of most frameworks;
  their global-batch form synchronises f across micro-batches, as here.
  For the default 'global' scope: f carries no gradient (it counts
  choices), so with f fixed the loss is linear in P = mean_i P_i, and
  E·Σ_e f_e·P_e = mean_i E·Σ_e f_e·P_{i,e}. With f the whole batch's, each
  micro-batch's loss is then exact once averaged, value and gradient; with
  its own f_i it is not. f needs every micro-batch's routing before any
  gradient, so a first scan runs the forward pass only and counts each MoE
  layer's choices (the model's return_routing); the second takes gradients
  with f fixed (moe_apply's balance_fraction). The price is one more forward
  pass per step, about a third more compute than a forward and backward,
  paid only where a balance loss is weighted (α > 0, a router with one).
  The alternative, a correction after the fact, would need the gradient of
  every P_e separately (E copies of the gradient).
* Router state moves once per step, after the last micro-batch, from aux
  that are totals over the batch (the spec's `totals`, e.g. the sign rule's
  per-expert load) summed over the micro-batches, and means averaged: the
  loss-free bias sees the global batch too.
* Logged routing metrics are the micro-batches' means: exact for shares of
  tokens; max_violation, dead_expert_fraction and router_logit_max become
  means of per-micro-batch values.

What cannot be split is refused (check): a loss or state that pools the
whole batch beyond the balance loss (the spec's batch_pooled, e.g. quantile
balancing's solve), and the adaptive balance weight, whose step reads the
batch's drops before its forward pass. Routing noise (jitter, random
policies) draws per micro-batch from fold_in(key, i): equal in
distribution, not bit for bit.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from moe_jax.core import losses
from moe_jax.errors import UserInputError, check_positive
from moe_jax.parallel import rules as rules_lib

# (params, batch, key, **model kwargs) -> (loss, (cross_entropy, aux)).
LossFn = Callable[..., tuple[jax.Array, tuple[jax.Array, dict[str, Any]]]]


def check(config, mcfg, batch_shards: int) -> None:
  """One-line errors for train.grad_accum_steps, before anything is written.

  batch_shards: data × expert, the mesh axes that split the batch.
  """
  n = config.train.grad_accum_steps
  fix = 'set --config.train.grad_accum_steps'
  check_positive('train.grad_accum_steps', n, fix=fix)
  if n == 1:
    return
  per_shard = config.batch_size // batch_shards
  if config.batch_size % (n * batch_shards):
    where = (f'batch_size={config.batch_size}' if batch_shards == 1 else
             f'the {per_shard} sequences each of the {batch_shards} data '
             f'shards holds (batch_size={config.batch_size})')
    raise UserInputError(
        f'train.grad_accum_steps={n} must divide {where}; {fix} to a '
        'divisor or change batch_size.')
  moe = mcfg.moe
  group = moe.group_size
  rows = per_shard // n * config.seq_len
  if group and mcfg.num_moe_layers and rows % group:
    raise UserInputError(
        f'moe.group_size={group} does not divide the {rows} tokens a data '
        f'shard holds in a micro-batch of train.grad_accum_steps={n}, so '
        f'routing groups would differ from one step; {fix} or set '
        'moe.group_size to a divisor.')
  if not mcfg.num_moe_layers:
    return
  reason = moe.spec.batch_pooled(moe)
  if moe.adaptive_balance.on:
    reason = ('moe.adaptive_balance moves the balance weight by the whole '
              "batch's drops before its forward pass; set log_step to 0")
  if reason:
    raise UserInputError(
        f'train.grad_accum_steps={n} splits the batch into micro-batches, '
        f'but {reason}, or set train.grad_accum_steps=1.')


def split(batch: dict[str, jax.Array], steps: int,
          shards: int) -> dict[str, jax.Array]:
  """[B, ...] leaves -> [steps, B/steps, ...]; micro-batch i takes the i-th
  run of B/(shards·steps) rows of each of the `shards` contiguous data
  shards, so it stays split over the same devices with no data moved, and
  routing groups keep their rows."""
  mesh = jax.sharding.get_abstract_mesh()

  def one(x):
    b, rest = x.shape[0], x.shape[1:]
    x = x.reshape(shards, steps, b // (shards * steps), *rest)
    x = jnp.swapaxes(x, 0, 1).reshape(steps, b // steps, *rest)
    if shards > 1 and not mesh.empty:  # Keep B/N split as B was.
      spec = rules_lib.logical_to_spec((None, 'batch') + (None,) * len(rest),
                                       mesh=mesh)
      x = jax.lax.with_sharding_constraint(x, spec)
    return x

  return jax.tree.map(one, batch)


def balance_fractions(loss_fn: LossFn, params, micro, keys,
                      num_outputs: int) -> dict[int, jax.Array]:
  """{MoE block: float [num_outputs] f over every micro-batch}: a scan of
  forward passes that keeps only the choices' counts."""

  def count(_, xs):
    batch, key = xs
    _, (_, aux) = loss_fn(params, batch, key, return_routing=True)
    out = {}
    for block, routing in aux['routing'].items():
      index = routing['plan'].expert_index  # [G, S, K]
      out[block] = (losses.choice_counts(index, num_outputs),
                    jnp.asarray(index.size, jnp.int32))
    return None, out

  _, counts = jax.lax.scan(count, None, (micro, keys))
  # Integer counts summed exactly, then one division: the N = 1 f.
  return {block: jnp.sum(c, axis=0) / jnp.sum(size)
          for block, (c, size) in counts.items()}


def needs_fractions(moe) -> bool:
  """Whether the global balance loss is weighted, so f must be pooled."""
  return (moe is not None and moe.balance_loss_scope == 'global' and
          moe.spec.balance_loss and moe.load_balance_weight > 0)


def mean_aux(aux: dict[str, jax.Array], totals: tuple[str, ...]) -> dict:
  """Stacked per-micro-batch aux [N, ...] -> the batch's: totals summed
  (matched by the name after 'moe_<i>/'), the rest averaged."""
  return {k: (jnp.sum(v, axis=0) if k.rsplit('/', 1)[-1] in totals
              else jnp.mean(v, axis=0)) for k, v in aux.items()}


def loss_and_grads(loss_fn: LossFn, params, batch: dict[str, jax.Array],
                   key: jax.Array, *, steps: int, moe=None):
  """lm_loss and its gradient over `batch` in `steps` micro-batches.

  Args:
    loss_fn: (params, batch, key, **model kwargs) -> (loss, (ce, aux)).
    params: what the gradient is taken with respect to.
    batch: [B, ...] arrays; B divisible by steps × the data shards.
    key: the step's key; micro-batch i routes with fold_in(key, i).
    steps: N.
    moe: the model's MoEConfig, or None for a dense model.

  Returns:
    ((loss, (cross_entropy, aux)), grads), as jax.value_and_grad of
    loss_fn on the whole batch returns them (module docstring).
  """
  micro = split(batch, steps, losses.batch_shards())
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(steps))
  kwargs = {}
  if needs_fractions(moe):
    kwargs['balance_fraction'] = balance_fractions(
        loss_fn, params, micro, keys, moe.num_router_outputs)
  grad_fn = jax.value_and_grad(
      lambda p, b, k: loss_fn(p, b, k, **kwargs), has_aux=True)

  def one(total, xs):
    (loss, (ce, aux)), grads = grad_fn(params, *xs)
    return jax.tree.map(jnp.add, total, grads), (loss, ce, aux)

  zeros = jax.tree.map(jnp.zeros_like, params)
  total, (loss, ce, aux) = jax.lax.scan(one, zeros, (micro, keys))
  grads = jax.tree.map(lambda g: g / steps, total)
  totals = moe.spec.totals if moe is not None else ()
  return (jnp.mean(loss), (jnp.mean(ce), mean_aux(aux, totals))), grads
