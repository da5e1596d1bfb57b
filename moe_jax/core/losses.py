"""Auxiliary router losses. Unweighted: the caller multiplies by α or c_z."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core.plan import expert_counts


def choice_counts(expert_index: jax.Array, num_outputs: int) -> jax.Array:
  """int32 [E]: how many of the choices in expert_index [..., K] picked each
  of the num_outputs router outputs (f_e of the balance loss is this over
  the number of choices)."""
  rows = expert_index.shape[0] if expert_index.ndim > 1 else 1
  counts = expert_counts(expert_index.reshape(rows, -1), num_outputs)
  return jnp.sum(counts, axis=0)


def load_balance_loss(probs: jax.Array, expert_index: jax.Array,
                      fraction: jax.Array | None = None) -> jax.Array:
  """Switch Transformer load-balancing loss, E · Σ_e f_e · P_e.

  Fedus et al. 2021, Eq. 4. f_e is the fraction of the T·K router choices
  that picked expert e (before capacity, so dropped tokens still count as
  demand), P_e the mean router probability of e. Dividing the choice count by
  K keeps the value at 1 under uniform routing for any K; it is E when every
  token puts all its probability on one expert, and also picks that expert.

  Args:
    probs: float [..., E] router probabilities (softmax over experts).
    expert_index: int [..., K] chosen experts, same leading shape.
    fraction: float [E] the f to use instead of these choices' own (it has
      no gradient either way). Gradient accumulation passes the whole
      batch's, so that the mean of its micro-batches' losses is the global
      loss, value and gradient (moe_jax/train/accumulate.py).

  Returns:
    Scalar float32.
  """
  num_experts = probs.shape[-1]
  probs = probs.reshape(-1, num_experts).astype(jnp.float32)
  if fraction is None:  # f_e, sums to 1.
    fraction = choice_counts(expert_index, num_experts) / expert_index.size
  mean_prob = jnp.mean(probs, axis=0)  # P_e, sums to 1.
  return num_experts * jnp.sum(fraction * mean_prob)


def z_loss(logits: jax.Array) -> jax.Array:
  """Router z-loss, mean over tokens of logsumexp(logits)².

  Zoph et al. 2022 (ST-MoE), Eq. 5. Penalises large logits, which keeps the
  float32 softmax well conditioned.

  Args:
    logits: float [..., E] router logits.

  Returns:
    Scalar float32.
  """
  lse = jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.square(lse))


BALANCE_SCOPES = ('global', 'micro_batch', 'sequence')


def batch_shards() -> int:
  """Data-parallel shards of the batch under the mesh in context (1 if none).

  The batch is split over the 'data' and 'expert' mesh axes (see
  moe_jax/parallel/mesh.py).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh is None or not mesh.axis_names:
    return 1
  sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
  return sizes.get('data', 1) * sizes.get('expert', 1)


def scoped_load_balance_loss(probs: jax.Array, expert_index: jax.Array, *,
                             scope: str,
                             num_shards: int | None = None) -> jax.Array:
  """The load-balance loss with f and P pooled over a chosen scope.

  E·Σ_e f_e·P_e is not linear in the tokens, so where f and P are pooled
  changes its value and its pull:
    'global': over every group of the array, i.e. the whole global batch
      when the router runs on global arrays under jit (as moe_apply does).
      This is `load_balance_loss` itself, the default. With gradient
      accumulation, f is pooled over every micro-batch of the step too
      (train/accumulate.py).
    'micro_batch': per data-parallel shard (the groups one device holds),
      then the mean over shards; what a per-device implementation computes.
      With gradient accumulation, per shard of each micro-batch: what one
      device's forward pass sees (the pooling before global-batch balance).
    'sequence': per group, then the mean over groups (a group is a
      sequence by default; the Hugging Face convention, and DeepSeek-V3's
      complementary sequence-wise loss, Eq. 17-20).
  Qwen and DeepSeek report the wider scopes balance more loosely per
  sequence but specialise better.

  Args:
    probs: float [G, S, E]; expert_index: int [G, S, K].
    scope: one of BALANCE_SCOPES.
    num_shards: shards for 'micro_batch'; default: the mesh in context.
  """
  if scope == 'global':
    return load_balance_loss(probs, expert_index)
  per_group = jax.vmap(load_balance_loss)
  if scope == 'sequence':
    return jnp.mean(per_group(probs, expert_index))
  n = batch_shards() if num_shards is None else num_shards
  g = probs.shape[0]
  if g % n:
    raise ValueError(f'{g} groups do not split into {n} shards.')
  # Groups are laid out shard-major (the batch axis is split contiguously),
  # so shard i holds groups [i·G/n, (i+1)·G/n).
  shard = lambda a: a.reshape(n, g // n * a.shape[1], a.shape[-1])
  return jnp.mean(per_group(shard(probs), shard(expert_index)))
