"""Prefill and decode steps over a KV cache, and how MoE layers route in them.

Padding. Prompts of different lengths are right-padded into one [B, P]
array with a length n_b per row. A token at position p attends to cache
slots <= p, and with right-padding every slot below a real position holds
an earlier real token of the same sequence, so that one mask is both the
causal and the padding mask; RoPE and learned positions see the same
absolute positions as an unpadded forward. The pads of row b fill slots
n_b..P-1 at prefill, above every real position, and decoding overwrites
slot n_b + t with the t-th generated token before any query reads it. The
cost: rows decode at different positions, so each step writes the cache
with a per-row scatter instead of one slice (left-padding would need
per-row position offsets and an explicit pad mask instead).

MoE at decode time (`moe=`):
  'dropless' (default): the layers route with a dropless dispatcher
    (the model's own if it has one, else 'dropless'), so no token is ever
    dropped, at prefill or decode, and each token's output is exactly what
    the full forward gives it when that forward drops nothing.
  'capacity': the model's own dispatcher and eval_capacity_factor, with
    each sequence's tokens of one call as a group (group_size unset: a
    group of S tokens spanning sequences has no counterpart when each step
    brings one token per sequence). At prefill the (padded) prompt is one
    group of S = P tokens, so capacity can drop prompt tokens as an eval
    forward over P tokens would (pads come after the real tokens, so in
    sequence-order priority they take no slot a real token wanted; BPR's
    gate-order priority can let them). At a decode step the group is one
    token and C >= 1, so nothing is dropped: decoding is then dropless
    whatever the capacity factor.

Routers that read the whole group (RouterSpec.group_wide: expert choice,
Soft MoE) are refused: even their causal forms decide a token's routing from
the router scores of earlier tokens in a window or chunk, which the KV cache
does not keep, so a decode step would route differently from the forward
pass. So is a router that routes by position in the group (uniform).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.core.config import MoEConfig
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.errors import UserInputError, check_choice
from moe_jax.models.config import ModelConfig
from moe_jax.models.kv_cache import KVCache

MOE_DECODE = ('dropless', 'capacity')


def decode_moe_config(config: ModelConfig,
                      moe: str = 'dropless') -> MoEConfig | None:
  """The MoEConfig the MoE layers decode with (module docstring); None for a
  dense model."""
  check_choice('moe', moe, MOE_DECODE)
  if config.num_moe_layers == 0:
    return None
  m = config.moe
  if m.spec.group_wide:
    raise UserInputError(
        f'moe.router={m.router!r} routes each token against other tokens of '
        'its group, which the KV cache does not keep, so it cannot decode '
        'token by token; generate with a token-choice router (e.g. topk).')
  if m.spec.routes_by_position:
    raise UserInputError(
        f'moe.router={m.router!r} routes a token by its position in its '
        'group, and a decode step is a group of one token, so it would route '
        'differently from training; generate with a router that reads the '
        'token (e.g. topk).')
  if moe == 'dropless' and DISPATCHERS[m.dispatcher].needs_capacity:
    return dataclasses.replace(m, dispatcher='dropless', group_size=None)
  return dataclasses.replace(m, group_size=None)


def pad_prompts(prompts: Sequence[Sequence[int]],
                vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
  """(tokens int32 [B, P] right-padded with 0, lengths int32 [B])."""
  if isinstance(prompts, (str, bytes)) or not len(prompts):
    raise UserInputError('prompts must be a non-empty list of token-id '
                         'sequences (encode text first).')
  rows = [np.asarray(p, np.int64).reshape(-1) for p in prompts]
  for i, row in enumerate(rows):
    if row.size == 0:
      raise UserInputError(
          f'prompt {i} is empty; give every prompt at least one token (e.g. '
          'a BOS or newline token).')
    if row.min() < 0 or row.max() >= vocab_size:
      raise UserInputError(
          f'prompt {i} has token ids outside [0, {vocab_size}); encode it '
          "with the model's tokenizer.")
  lengths = np.array([r.size for r in rows], np.int32)
  tokens = np.zeros((len(rows), lengths.max()), np.int32)
  for i, row in enumerate(rows):
    tokens[i, :row.size] = row
  return tokens, lengths


def prefill(model, tokens: jax.Array, lengths: jax.Array, cache: KVCache,
            moe_config: MoEConfig | None = None):
  """Runs the right-padded prompts [B, P] (row b's first lengths[b] real)
  into the cache at positions 0..P-1.

  Returns (float32 logits [B, V] of each row's last prompt token, cache).
  """
  b, p = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (b, p))
  return model.cached(tokens, positions, cache, moe_config=moe_config,
                      select=lengths - 1)


def decode_step(model, tokens: jax.Array, positions: jax.Array,
                cache: KVCache, moe_config: MoEConfig | None = None):
  """One token per sequence, tokens int [B] at positions int [B].

  Returns (float32 logits [B, V] for the following token, cache).
  """
  logits, cache = model.cached(tokens[:, None], positions[:, None], cache,
                               moe_config=moe_config)
  return logits[:, 0], cache
