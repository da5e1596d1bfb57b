"""Text generation: prefill, then a jitted decode loop over a KV cache."""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax.errors import UserInputError, check_positive, require
from moe_jax.generation.decode import (decode_moe_config, decode_step,
                                       pad_prompts, prefill)
from moe_jax.generation.sampling import GREEDY, Sampling, sample_filtered
from moe_jax.models.kv_cache import KVCache


class Generated(NamedTuple):
  """What generate returns.

  Attributes:
    tokens: int32 [B, N] the new tokens of each prompt (N =
      max_new_tokens); past lengths[b] they are 0.
    lengths: int32 [B] how many of them count: up to and including the
      stop token, or N.
  """
  tokens: np.ndarray
  lengths: np.ndarray


def generate(model, prompts: Sequence[Sequence[int]], *, max_new_tokens: int,
             sampling: Sampling = GREEDY, key: jax.Array | int = 0,
             stop_token: int | None = None,
             moe: str = 'dropless') -> Generated:
  """Continues each prompt with up to max_new_tokens tokens.

  The prompts are right-padded into one batch and run through the model
  once (prefill), filling a KV cache of P + N - 1 slots per sequence; then
  one jitted lax.while_loop decodes a token per sequence per step, and
  stops early once every sequence has produced stop_token.

  Args:
    model: a TransformerLM (e.g. from hf_moe.load_model, or a restored run).
    prompts: B token-id sequences, each non-empty, of any lengths.
    max_new_tokens: N >= 1; the longest prompt plus N must fit the model's
      max_len.
    sampling: greedy (the default), or temperature / top-k / top-p.
    key: a jax.random key or an int seed; step t draws with fold_in(key, t),
      so the same key gives the same tokens.
    stop_token: a sequence ends after producing this id; None: never.
    moe: how MoE layers route while decoding: 'dropless' (default) or
      'capacity' (the model's own capacity; see moe_jax/generation/decode.py).

  Returns:
    Generated(tokens [B, N], lengths [B]) as numpy arrays.
  """
  config = model.config
  tokens, lengths = pad_prompts(prompts, config.vocab_size)
  check_positive('max_new_tokens', max_new_tokens)
  total = tokens.shape[1] + max_new_tokens
  if total > config.max_len:
    raise UserInputError(
        f'the longest prompt ({tokens.shape[1]} tokens) plus max_new_tokens='
        f'{max_new_tokens} is {total}, more than the model\'s max_len='
        f'{config.max_len}; shorten the prompt or lower max_new_tokens.')
  require(stop_token is None or (isinstance(stop_token, (int, np.integer))
                                 and 0 <= stop_token < config.vocab_size),
          'stop_token', stop_token,
          f'be a token id in [0, {config.vocab_size}) or None')
  if not isinstance(sampling, Sampling):
    raise UserInputError(f'sampling={sampling!r} must be a Sampling.')
  decode_moe_config(config, moe)  # Refuses bad input before compiling.
  if isinstance(key, (int, np.integer)):
    key = jax.random.key(int(key))
  graphdef, state = nnx.split(model)
  # Only greedy-or-not and the shapes are static: the sampling knobs and the
  # stop token (-1: none) are traced, so changing them does not recompile.
  out, count = _generate(
      state, jnp.asarray(tokens), jnp.asarray(lengths), key,
      sampling.arrays(), jnp.int32(-1 if stop_token is None else stop_token),
      graphdef=graphdef, max_new_tokens=max_new_tokens,
      greedy=sampling.greedy, moe=moe)
  return Generated(np.asarray(out), np.asarray(count))


@functools.partial(jax.jit, static_argnames=(
    'graphdef', 'max_new_tokens', 'greedy', 'moe'))
def _generate(state, tokens, lengths, key, sampling, stop_token, *, graphdef,
              max_new_tokens, greedy, moe):
  """(tokens int32 [B, N], counts int32 [B]); see generate."""
  model = nnx.merge(graphdef, state)
  moe_config = decode_moe_config(model.config, moe)
  b, p = tokens.shape
  n = max_new_tokens

  def sample(logits, step):
    if greedy:
      return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return sample_filtered(logits, jax.random.fold_in(key, step), *sampling)

  # The last new token is only output, never fed back: P + N - 1 slots.
  cache = KVCache.zeros(model.config, b, p + n - 1)
  logits, cache = prefill(model, tokens, lengths, cache, moe_config)
  first = sample(logits, 0)
  out = jnp.zeros((b, n), jnp.int32).at[:, 0].set(first)
  stopped = lambda t: t == stop_token  # Never, for -1.
  init = (jnp.int32(1), first, out, stopped(first),
          jnp.ones((b,), jnp.int32), cache)

  def cond(carry):
    step, _, _, done, _, _ = carry
    return (step < n) & ~jnp.all(done)

  def body(carry):
    step, token, out, done, count, cache = carry
    # `token` is new token step-1 of each row, at position n_b + step - 1.
    logits, cache = decode_step(model, token, lengths + step - 1, cache,
                                moe_config)
    nxt = sample(logits, step)
    nxt = jnp.where(done, 0, nxt)  # Finished rows decode on, unseen.
    out = jax.lax.dynamic_update_slice(out, nxt[:, None], (0, step))
    return (step + 1, nxt, out, done | stopped(nxt), count + ~done, cache)

  _, _, out, _, count, _ = jax.lax.while_loop(cond, body, init)
  return out, count
