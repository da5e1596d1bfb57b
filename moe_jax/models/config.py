"""ModelConfig: the decoder-only LM's shape, validated in one place."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from moe_jax.core.config import MoEConfig, check_bool
from moe_jax.errors import UserInputError

POSITIONS = ('rope', 'learned')
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """A pre-norm causal transformer whose every `moe_every`-th FFN is MoE.

  Attributes:
    vocab_size: V; 256 for raw bytes, or a tokenizer's vocabulary (any size).
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
    num_kv_heads: key/value heads of grouped-query attention (Ainslie et
      al. 2023); must divide num_heads. None: num_heads (full multi-head).
    tie_embeddings: True: the output head is the input embedding's
      transpose (logits = x·Eᵀ, one [V, D] matrix); False: a separate head.
    norm_eps: ε added to the mean square in every RMSNorm.
    rope_theta: θ, the base of the rotary frequencies θ^(-2i/Dh).
    first_dense_layers: the first this many layers keep a dense FFN even
      where moe_every would make them MoE (DeepSeekMoE's dense layer 0).
    qkv_bias: biases on the q, k and v projections (Qwen2-MoE).
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
  num_kv_heads: int | None = None
  tie_embeddings: bool = False
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  first_dense_layers: int = 0
  qkv_bias: bool = False

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
    self._check_architecture()
    self._check_causal_routing()

  def _check_architecture(self) -> None:
    """The fields real architectures need (all off by default)."""
    kv = self.num_kv_heads
    if kv is not None and (not isinstance(kv, int) or isinstance(kv, bool) or
                           kv <= 0 or self.num_heads % kv):
      raise UserInputError(
          f'model.num_kv_heads={kv!r} must be a positive int dividing '
          f'model.num_heads={self.num_heads} (or unset for multi-head).')
    for name in ('tie_embeddings', 'qkv_bias'):
      check_bool(f'model.{name}', getattr(self, name))
    for name in ('norm_eps', 'rope_theta'):
      value = getattr(self, name)
      if (not isinstance(value, (int, float)) or isinstance(value, bool) or
          not value > 0 or value == float('inf')):
        raise UserInputError(
            f'model.{name}={value!r} must be a finite number > 0 (e.g. '
            f'{"1e-5" if name == "norm_eps" else "10000.0"}).')
    if (not isinstance(self.first_dense_layers, int) or
        not 0 <= self.first_dense_layers <= self.num_layers):
      raise UserInputError(
          f'model.first_dense_layers={self.first_dense_layers!r} must be an '
          f'int in [0, model.num_layers={self.num_layers}].')

  def _check_causal_routing(self) -> None:
    """This model is a causal decoder: refuse routing that sees the future."""
    moe = self.moe
    if self.moe_every == 0 or not moe.spec.group_wide:
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
    return (self.moe_every > 0 and i >= self.first_dense_layers and
            (i + 1) % self.moe_every == 0)

  @property
  def kv_heads(self) -> int:
    """Hkv: num_kv_heads, or num_heads when it is unset."""
    return self.num_kv_heads or self.num_heads

  @property
  def num_moe_layers(self) -> int:
    return sum(self.is_moe_layer(i) for i in range(self.num_layers))

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]
