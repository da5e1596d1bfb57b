"""The key/value cache of cached decoding: one K and one V array per layer."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from moe_jax.models.config import ModelConfig


class KVCache(NamedTuple):
  """Keys and values of the tokens seen so far, per layer.

  Attributes:
    k, v: one array per layer, each [B, Lmax, Hkv, Dh] in the compute dtype.
      Slot j of row b holds the (rotated) key and the value of sequence b's
      token at absolute position j. Only the Hkv kv heads are stored: with
      grouped-query attention that is H/Hkv times less memory than the heads
      the queries read. Which slots are filled is the caller's to track (the
      generation loop keeps a position per sequence).
      With multi-head latent attention (model.mla) the slots hold what MLA
      caches instead: k the normed latent c [B, Lmax, R] and v the rotated
      shared key k_r [B, Lmax, Dr] (models/mla.py), R + Dr numbers per
      token instead of 2·Hkv·Dh.
  """

  k: tuple[jax.Array, ...]
  v: tuple[jax.Array, ...]

  @classmethod
  def zeros(cls, config: ModelConfig, batch: int, length: int) -> KVCache:
    """An empty cache of `length` (Lmax) slots for `batch` sequences."""
    shape = (batch, length, config.kv_heads, config.head_width)
    k_shape = v_shape = shape
    if config.mla is not None:
      k_shape = (batch, length, config.mla.kv_lora_rank)
      v_shape = (batch, length, config.mla.qk_rope_head_dim)
    dt = config.compute_dtype
    layers = range(config.num_layers)
    return cls(tuple(jnp.zeros(k_shape, dt) for _ in layers),
               tuple(jnp.zeros(v_shape, dt) for _ in layers))

  @property
  def length(self) -> int:
    """Lmax, the slots per sequence."""
    return self.k[0].shape[1]
