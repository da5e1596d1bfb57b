"""Choosing the next token from logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from moe_jax.errors import require


# The smallest positive temperature float32 holds as a normal number.
_TINY = float(np.finfo(np.float32).tiny)


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How the next token is chosen from the logits.

  Attributes:
    temperature: T, logits are divided by T before sampling; 0 is greedy
      (argmax), which is also the limit T -> 0: the logits are shifted by
      their maximum before the division, so a tiny T gives the argmax (ties
      aside) instead of overflowing.
    top_k: sample among the k most likely tokens only; None: all.
    top_p: nucleus sampling (Holtzman et al. 2020): among the fewest most
      likely tokens whose probabilities (after temperature and top_k) sum to
      at least top_p; 1.0: all. The most likely token is always kept, so a
      tiny top_p is greedy.
  The filters apply in the order temperature, top_k, top_p, as in Hugging
  Face's generate.
  """

  temperature: float = 1.0
  top_k: int | None = None
  top_p: float = 1.0

  def __post_init__(self):
    t = self.temperature
    require(isinstance(t, (int, float)) and not isinstance(t, bool)
            and (t == 0 or _TINY <= t < math.inf), 'temperature', t,
            f'be 0 (greedy) or a finite number >= {_TINY:.3g} (float32 turns '
            'a smaller one into 0)', 'use 0 for greedy decoding')
    k = self.top_k
    require(k is None or (isinstance(k, int) and not isinstance(k, bool)
                          and k > 0), 'top_k', k,
            'be a positive int', 'or None (no top-k filter)')
    p = self.top_p
    require(isinstance(p, (int, float)) and not isinstance(p, bool)
            and 0 < p <= 1, 'top_p', p, 'be in (0, 1]',
            'use 1.0 for no nucleus filter')

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


  def arrays(self) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(temperature, top_k, top_p) as arrays, top_k 0 for none: traced
    values, so one compiled decode loop serves every setting."""
    return (jnp.float32(self.temperature or 1.0),
            jnp.int32(self.top_k or 0), jnp.float32(self.top_p))


GREEDY = Sampling(temperature=0.0)


def filter_logits(logits: jax.Array, temperature, top_k, top_p) -> jax.Array:
  """float32 [B, V] logits -> tempered logits, -inf outside top-k and top-p.

  temperature > 0, top_k (0: none) and top_p in (0, 1] may be traced
  scalars (see Sampling.arrays).
  """
  logits = logits.astype(jnp.float32)
  # Shifted so the maximum is 0: x / T then never overflows to inf - inf.
  logits = (logits - jnp.max(logits, -1, keepdims=True)) / temperature
  v = logits.shape[-1]
  ordered = jnp.sort(logits, axis=-1)[:, ::-1]  # Descending.
  # One sort serves both filters; k is an index into it, so it may be traced.
  k = jnp.where((top_k > 0) & (top_k < v), top_k, v)
  ordered = jnp.where(jnp.arange(v) < k, ordered, -jnp.inf)
  probs = jax.nn.softmax(ordered, axis=-1)
  # Keep a token while the mass before it is < top_p: the smallest set
  # reaching top_p, and always the first.
  keep = (jnp.cumsum(probs, axis=-1) - probs < top_p) & (jnp.arange(v) < k)
  cutoff = jnp.min(jnp.where(keep, ordered, jnp.inf), -1, keepdims=True)
  return jnp.where(logits < cutoff, -jnp.inf, logits)


def sample(logits: jax.Array, key: jax.Array, sampling: Sampling) -> jax.Array:
  """int32 [B] next tokens from float32 [B, V] logits."""
  if sampling.greedy:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return sample_filtered(logits, key, *sampling.arrays())


def sample_filtered(logits: jax.Array, key: jax.Array, temperature, top_k,
                    top_p) -> jax.Array:
  """int32 [B] draws from filter_logits(logits, ...)."""
  filtered = filter_logits(logits, temperature, top_k, top_p)
  return jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
