"""ModelConfig: the decoder-only LM's shape, validated in one place."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from moe_jax.core.config import MoEConfig
from moe_jax.errors import (UserInputError, check_bool, check_choice,
                            check_non_negative, check_positive, require)
from moe_jax.models import mla as mla_lib
from moe_jax.models import yarn
from moe_jax.models.norm import QK_NORMS

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
    sliding_window: W, each position attends only to the last W positions
      (itself included; Mistral/Mixtral); None: the whole causal context.
    head_dim: Dh, the width of each attention head; None: d_model /
      num_heads. Qwen3 sets it apart (e.g. 128 with D/H = 64), so q, k and v
      project D to H·Dh and the output H·Dh back to D.
    qk_norm: RMSNorm on queries and keys after their projections, before
      RoPE: 'per_head' (Qwen3: each head over its Dh, one [Dh] scale) or
      'all_heads' (OLMoE: the whole H·Dh projection, an [H, Dh] scale);
      None: no norm.
    full_attention_every: with sliding_window, layers i with (i + 1) %
      full_attention_every == 0 attend to the whole context and the others
      through the window (gpt-oss: 2, windows in even layers; Hugging
      Face's layer_types); 0: the window in every layer.
    attention_sinks: a learned logit per head joins each softmax's
      denominator and takes no value (gpt-oss; models/attention.py).
    attn_out_bias: a bias on the attention output projection (gpt-oss,
      whose q, k and v have biases too: qkv_bias).
    mla: multi-head latent attention (DeepSeek-V2/V3, models/mla.py) in
      place of the q/k/v attention: an MLAConfig, or a mapping of its
      fields; None: the usual attention.
    rope_scaling: YaRN rotary scaling for contexts beyond the pretraining
      one (DeepSeek-V2/V3, Qwen3; models/yarn.py): a YarnConfig, or a
      mapping of its fields; None: plain RoPE.
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
  sliding_window: int | None = None
  head_dim: int | None = None
  qk_norm: str | None = None
  full_attention_every: int = 0
  attention_sinks: bool = False
  attn_out_bias: bool = False
  mla: Any = None
  rope_scaling: Any = None

  def __post_init__(self):
    for name in ('vocab_size', 'd_model', 'num_layers', 'num_heads', 'd_ff',
                 'max_len'):
      check_positive(f'model.{name}', getattr(self, name))
    if self.head_dim is None:
      require(self.d_model % self.num_heads == 0, 'model.num_heads',
              self.num_heads, f'divide model.d_model={self.d_model}',
              fix='or set model.head_dim')
    else:
      check_positive('model.head_dim', self.head_dim,
                     fix='or leave it unset for d_model / num_heads')
    check_choice('model.position', self.position, POSITIONS)
    if self.position == 'rope' and self.head_width % 2:
      # Two fields at once: not a check of one value.
      raise UserInputError('rotary positions need an even head width '
                           '(model.head_dim, or d_model / num_heads).')
    check_choice('model.dtype', self.dtype, tuple(DTYPES))
    check_non_negative('model.moe_every', self.moe_every, fix='0 is dense')
    if self.sliding_window is not None:
      check_positive('model.sliding_window', self.sliding_window,
                     fix='or leave it unset for full attention')
    check_non_negative('model.full_attention_every', self.full_attention_every,
                       fix='0 puts the window in every layer')
    require(not self.full_attention_every or self.sliding_window is not None,
            'model.full_attention_every', self.full_attention_every,
            'come with model.sliding_window (the other layers\' window)',
            fix='or set it to 0')
    self._check_architecture()
    self._check_mla()
    self._check_rope_scaling()
    self._check_causal_routing()

  def _check_architecture(self) -> None:
    """The fields real architectures need (all off by default)."""
    kv = self.num_kv_heads
    require(kv is None or (isinstance(kv, int) and not isinstance(kv, bool)
                           and kv > 0 and self.num_heads % kv == 0),
            'model.num_kv_heads', kv,
            f'be a positive int dividing model.num_heads={self.num_heads} '
            '(or unset for multi-head)')
    for name in ('tie_embeddings', 'qkv_bias', 'attention_sinks',
                 'attn_out_bias'):
      check_bool(f'model.{name}', getattr(self, name))
    for name, example in (('norm_eps', '1e-5'), ('rope_theta', '10000.0')):
      value = getattr(self, name)
      require(isinstance(value, (int, float)) and not isinstance(value, bool)
              and 0 < value < float('inf'), f'model.{name}', value,
              f'be a finite number > 0 (e.g. {example})')
    check_choice('model.qk_norm', self.qk_norm, (None, *QK_NORMS))
    first = self.first_dense_layers
    require(isinstance(first, int) and 0 <= first <= self.num_layers,
            'model.first_dense_layers', first,
            f'be an int in [0, model.num_layers={self.num_layers}]')

  def _check_mla(self) -> None:
    """MLA replaces the q/k/v projections, so their options do not apply."""
    # Frozen: the resolved MLAConfig replaces a mapping, once.
    object.__setattr__(self, 'mla', mla_lib.resolve(self.mla))
    if self.mla is None:
      return
    clashes = [(self.position != 'rope', f'model.position={self.position!r} '
                "(MLA's decoupled keys are rotary: 'rope')"),
               (self.num_kv_heads is not None, 'model.num_kv_heads (MLA '
                'shares one latent across heads; leave it unset)'),
               (self.qkv_bias, 'model.qkv_bias=True (MLA has no biases)'),
               (self.sliding_window is not None, 'model.sliding_window '
                '(not modelled with MLA; leave it unset)'),
               (self.qk_norm is not None, 'model.qk_norm (MLA norms its '
                'latents instead; leave it unset)'),
               (self.head_dim is not None, 'model.head_dim (MLA sets its '
                'widths in model.mla; leave it unset)'),
               (self.attention_sinks or self.attn_out_bias,
                'model.attention_sinks and model.attn_out_bias (not '
                'modelled with MLA; leave them False)')]
    found = [text for bad, text in clashes if bad]
    if found:
      raise UserInputError(f'model.mla is set, which excludes {found[0]}.')

  def _check_rope_scaling(self) -> None:
    # Frozen: the resolved YarnConfig replaces a mapping, once.
    object.__setattr__(self, 'rope_scaling', yarn.resolve(self.rope_scaling))
    if self.rope_scaling is not None:
      require(self.position == 'rope', 'model.position', self.position,
              "be 'rope' when model.rope_scaling is set",
              fix='or set model.rope_scaling.factor=0')

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

  def layer_window(self, i: int) -> int | None:
    """Layer i's sliding window W, or None where it attends to all."""
    every = self.full_attention_every
    return None if every and (i + 1) % every == 0 else self.sliding_window

  @property
  def kv_heads(self) -> int:
    """Hkv: num_kv_heads, or num_heads when it is unset."""
    return self.num_kv_heads or self.num_heads

  @property
  def head_width(self) -> int:
    """Dh: head_dim, or d_model / num_heads when it is unset."""
    return self.head_dim or self.d_model // self.num_heads

  @property
  def num_moe_layers(self) -> int:
    return sum(self.is_moe_layer(i) for i in range(self.num_layers))

  @property
  def compute_dtype(self):
    return DTYPES[self.dtype]
