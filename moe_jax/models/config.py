"""ModelConfig: the decoder-only LM's shape, validated in one place."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from moe_jax.core.config import NONCAUSAL_CAPABLE, MoEConfig
from moe_jax.errors import UserInputError

POSITIONS = ('rope', 'learned')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A pre-norm causal transformer whose every `moe_every`-th FFN is MoE.

  Attributes:
    vocab_size: V; 256 for raw bytes (no tokenizer).
    d_model: D.
    num_layers: transformer blocks.
    num_heads: attention heads; must divide d_model.
    d_ff: hidden width of the dense FFNs.
    max_len: the longest sequence (sizes learned position embeddings).
    position: 'rope' (rotary, Su et al. 2021) or 'learned'.
    moe_every: layers i with (i + 1) % moe_every == 0 use the MoE FFN, so 2
      makes every other layer MoE, as in Switch. 0 gives the dense twin: the
      same model with every FFN dense, which has the same active parameters
      per token as top-1 MoE when moe.d_ff == d_ff.
    moe: the MoE layer's config.
    dtype: compute dtype, 'float32' or 'bfloat16'. Parameters stay float32
      and the router always runs in float32.
    init_scale: variance scale of the dense and attention weights.
  """

  vocab_size: int = 256
  d_model: int = 128
  num_layers: int = 4
  num_heads: int = 4
  d_ff: int = 512
  max_len: int = 256
  position: str = 'rope'
  moe_every: int = 2
  moe: MoEConfig = dataclasses.field(default_factory=MoEConfig)
  dtype: str = 'float32'
  init_scale: float = 1.0

  def __post_init__(self):
    for name in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_ff',
                 'max_len'):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise UserInputError(f'model.{name}={value!r} must be a positive int.')
    if self.d_model % self.num_heads:
      raise UserInputError(
          f'model.num_heads={self.num_heads} must divide '
          f'model.d_model={self.d_model}.')
    if self.position not in POSITIONS:
      raise UserInputError(
          f'model.position={self.position!r} is not valid; allowed values: '
          f'{POSITIONS}.')
    if self.position == 'rope' and (self.d_model // self.num_heads) % 2:
      raise UserInputError('rotary positions need an even head width '
                           '(d_model / num_heads).')
    if self.dtype not in DTYPES:
      raise UserInputError(
          f'model.dtype={self.dtype!r} is not valid; allowed values: '
          f'{tuple(DTYPES)}.')
    if not isinstance(self.moe_every, int) or self.moe_every < 0:
      raise UserInputError(
          f'model.moe_every={self.moe_every!r} must be >= 0 (0: dense).')

    self._check_causal_routing()

  def _check_causal_routing(self) -> None:
    """This model is a causal decoder: refuse routing that sees the future."""
    moe = self.moe
    if self.moe_every == 0 or moe.router not in NONCAUSAL_CAPABLE:
      return
    if not moe.causal_routing and not moe.allow_noncausal:
      raise UserInputError(
          f'moe.router={moe.router!r} with moe.causal_routing=False lets '
          'later tokens change earlier outputs in this causal decoder; set '
          'moe.causal_routing=True, or moe.allow_noncausal=True to study the '
          'leak on purpose.')
    if moe.causal_routing and self.max_len % moe.causal_chunk:
      raise UserInputError(
          f'moe.causal_chunk={moe.causal_chunk} must divide the sequence '
          f'length ({self.max_len}); pick a divisor of seq_len.')

  def is_moe_layer(self, i: int) -> bool:
    return self.moe_every > 0 and (i + 1) % self.moe_every == 0

  @property
  def num_moe_layers(self) -> int:
    return sum(self.is_moe_layer(i) for i in range(self.num_layers))

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]
