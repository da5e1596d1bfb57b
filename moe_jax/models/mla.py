"""Multi-head latent attention (MLA; DeepSeek-V2, DeepSeek-AI 2024, Sec. 2.1),
the attention of DeepSeek-V2 and V3, selected by ModelConfig.mla.

Shape letters: B batch, L new tokens, M cached slots, D model width, H heads,
R the kv latent (kv_lora_rank), Rq the query latent (q_lora_rank), Dn the
per-head key width without positions (qk_nope_head_dim), Dr the rotary key
width (qk_rope_head_dim), Dv the value width (v_head_dim).

Per token x [D]:
  queries   q = norm(x·W_DQ)·W_UQ, or x·W_Q without a query latent: [H, Dn+Dr],
            split into q_nope [H, Dn] and q_rope [H, Dr] (then rotated);
  latent    [c, k_r] = x·W_DKV: c = norm(c) [R], and one rotated key
            k_r [Dr] that every head shares (the decoupled RoPE key);
  keys, values  [k_nope, v] = c·W_UKV: [H, Dn] and [H, Dv];
  scores    (q_nope·k_nope + q_rope·k_r) / sqrt(Dn + Dr);
  output    Σ softmax(scores)·v [H, Dv], then ·W_O -> [D].

Only c and k_r depend on the token alone, so the decoding cache holds them:
R + Dr numbers per token and layer instead of 2·H·Dh (`cached`). Decoding
then never expands them: W_UK is folded into the query (q_nope·W_UKᵀ is a
query in latent space) and W_UV applied after the weighted sum, the
"absorbed" form of the paper's Sec. 2.1.2. `__call__` expands the keys and
values as written above; the two agree (tests/test_models_mla.py).

RoPE layout: `rotary`'s rotate-half pairs (x_i, x_{i+Dr/2}). DeepSeek's
checkpoints pair (x_2i, x_2i+1); the converter (convert/hf_deepseek.py)
reorders the rotary rows of their weights, which leaves every q·k unchanged.
The two latent norms use ε = 1e-6 whatever model.norm_eps is, as DeepSeek's
code and transformers build them (RMSNorm(rank) with its default ε).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.errors import UserInputError, check_positive
from moe_jax.layers.params import param, scaled_init
from moe_jax.models.attention import rotary
from moe_jax.models.norm import RMSNorm
from moe_jax.models.section import resolve_section
from moe_jax.models.yarn import YarnConfig

LATENT_NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class MLAConfig:
  """model.mla: the latent attention's widths; the defaults are
  DeepSeek-V3's but for the query latent (V3: q_lora_rank=1536; V2-Lite
  has none).

  Attributes:
    kv_lora_rank: R, the compressed key/value latent per token. In a
      config file's model.mla section 0 turns MLA off (the default).
    qk_nope_head_dim: Dn, the per-head key/query width without RoPE.
    qk_rope_head_dim: Dr, the rotated width, one key shared by all heads;
      even.
    v_head_dim: Dv, the per-head value width.
    q_lora_rank: Rq, the query latent; None: queries straight from x.
  """

  kv_lora_rank: int = 512
  qk_nope_head_dim: int = 128
  qk_rope_head_dim: int = 64
  v_head_dim: int = 128
  q_lora_rank: int | None = None

  def __post_init__(self):
    for name in ('kv_lora_rank', 'qk_nope_head_dim', 'qk_rope_head_dim',
                 'v_head_dim'):
      check_positive(f'model.mla.{name}', getattr(self, name))
    if self.q_lora_rank is not None:
      check_positive('model.mla.q_lora_rank', self.q_lora_rank,
                     fix='or None for queries straight from x')
    if self.qk_rope_head_dim % 2:
      raise UserInputError(
          f'model.mla.qk_rope_head_dim={self.qk_rope_head_dim} must be even '
          '(RoPE rotates pairs); e.g. 64.')

  @property
  def qk_head_dim(self) -> int:
    """Dn + Dr, the width each query meets each key over."""
    return self.qk_nope_head_dim + self.qk_rope_head_dim


def off_section() -> dict[str, int | None]:
  """A config file's model.mla section: MLAConfig's fields, MLA off."""
  return dict(dataclasses.asdict(MLAConfig()), kv_lora_rank=0)


def resolve(value: Any) -> MLAConfig | None:
  """model.mla as given (None, an MLAConfig, or a mapping such as a config
  file's section, off while its kv_lora_rank is 0 or absent) -> None or an
  MLAConfig."""
  return resolve_section(value, MLAConfig, name='model.mla', article='an',
                         off=off_section(), switch='kv_lora_rank',
                         off_words='MLA off', example='512')


def _kernel(rngs, scale, shape, axes, in_axes=1):
  """A fan-in-scaled kernel whose first `in_axes` axes are its inputs."""
  init = nnx.initializers.variance_scaling(
      scale, 'fan_in', 'truncated_normal', in_axis=tuple(range(in_axes)),
      out_axis=tuple(range(in_axes, len(shape))))
  return param(rngs, init, shape, axes)


def _softmax(scores: jax.Array, visible: jax.Array, dt) -> jax.Array:
  """Masked softmax over the last axis, in float32 (as attention.py does)."""
  scores = jnp.where(visible, scores.astype(jnp.float32), -1e30)
  return jax.nn.softmax(scores, axis=-1).astype(dt)


class MultiHeadLatentAttention(nnx.Module):
  """Causal MLA (module docstring); the same call signatures as
  CausalSelfAttention, so a Block holds either."""

  def __init__(self, d_model: int, num_heads: int, mla: MLAConfig, *,
               init_scale: float, rngs: nnx.Rngs, dtype=jnp.float32,
               rope_theta: float = 10000.0,
               rope_scaling: YarnConfig | None = None):
    h, m = num_heads, mla
    self.mla = mla
    self.dtype = dtype
    self.rope_theta = rope_theta
    self.rope_scaling = rope_scaling
    self.scale = 1.0 / math.sqrt(m.qk_head_dim)
    if rope_scaling is not None:  # DeepSeek's YaRN temperature (yarn.py).
      self.scale *= rope_scaling.mla_softmax_factor
    if m.q_lora_rank is None:
      self.wq = _kernel(rngs, init_scale, (d_model, h, m.qk_head_dim),
                        ('embed', 'heads', 'kv'))
    else:
      self.wq_a = param(rngs, scaled_init(init_scale),
                        (d_model, m.q_lora_rank), ('embed', None))
      self.q_norm = RMSNorm(m.q_lora_rank, rngs=rngs, eps=LATENT_NORM_EPS)
      self.wq_b = _kernel(rngs, init_scale, (m.q_lora_rank, h, m.qk_head_dim),
                          (None, 'heads', 'kv'))
    # One projection to [c, k_r], as DeepSeek stores it (kv_a_proj_with_mqa).
    self.wkv_a = param(rngs, scaled_init(init_scale),
                       (d_model, m.kv_lora_rank + m.qk_rope_head_dim),
                       ('embed', None))
    self.kv_norm = RMSNorm(m.kv_lora_rank, rngs=rngs, eps=LATENT_NORM_EPS)
    self.wkv_b = _kernel(
        rngs, init_scale, (m.kv_lora_rank, h, m.qk_nope_head_dim + m.v_head_dim),
        (None, 'heads', 'kv'))
    self.wo = _kernel(rngs, init_scale, (h, m.v_head_dim, d_model),
                      ('heads', 'kv', 'embed'), in_axes=2)

  def _w(self, name):
    return getattr(self, name)[...].astype(self.dtype)

  def _queries(self, x, positions):
    """x [B, L, D] -> q_nope [B, L, H, Dn], rotated q_rope [B, L, H, Dr]."""
    if self.mla.q_lora_rank is None:
      q = jnp.einsum('bld,dhk->blhk', x, self._w('wq'))
    else:
      q_latent = self.q_norm(jnp.einsum('bld,dr->blr', x, self._w('wq_a')))
      q = jnp.einsum('blr,rhk->blhk', q_latent, self._w('wq_b'))
    dn = self.mla.qk_nope_head_dim
    return q[..., :dn], rotary(q[..., dn:], positions, self.rope_theta,
                                  self.rope_scaling)

  def _latent(self, x, positions):
    """x [B, L, D] -> normed latent c [B, L, R], rotated k_r [B, L, Dr]."""
    kv = jnp.einsum('bld,dr->blr', x, self._w('wkv_a'))
    r = self.mla.kv_lora_rank
    k_rope = rotary(kv[..., None, r:], positions, self.rope_theta,
                    self.rope_scaling)[..., 0, :]
    return self.kv_norm(kv[..., :r]), k_rope

  def _out(self, out):
    """Per-head values [B, L, H, Dv] -> [B, L, D]."""
    return jnp.einsum('blhk,hkd->bld', out, self._w('wo'))

  def __call__(self, x: jax.Array) -> jax.Array:
    """x [B, L, D] -> [B, L, D], with keys and values expanded."""
    x = x.astype(self.dtype)
    length = x.shape[1]
    positions = jnp.arange(length)
    q_nope, q_rope = self._queries(x, positions)
    latent, k_rope = self._latent(x, positions)
    kv = jnp.einsum('blr,rhk->blhk', latent, self._w('wkv_b'))
    k_nope, v = jnp.split(kv, [self.mla.qk_nope_head_dim], axis=-1)
    scores = (jnp.einsum('blhk,bmhk->bhlm', q_nope, k_nope) +
              jnp.einsum('blhk,bmk->bhlm', q_rope, k_rope)) * self.scale
    causal = jnp.tril(jnp.ones((length, length), bool))
    weights = _softmax(scores, causal, self.dtype)
    return self._out(jnp.einsum('bhlm,bmhk->blhk', weights, v))

  def cached(self, x: jax.Array, positions: jax.Array, latent_cache: jax.Array,
             rope_cache: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Attention of new tokens over the compressed cache (decoding).

    The slots and the mask are CausalSelfAttention.cached's: slot j of a row
    holds its token at position j, written before any query reads it, and a
    token sees the slots at positions <= its own.

    Args:
      x: [B, L, D] the new tokens.
      positions: int [B, L] their absolute positions (< M).
      latent_cache: [B, M, R] the normed latents c.
      rope_cache: [B, M, Dr] the rotated shared keys k_r.

    Returns:
      (y [B, L, D], latent_cache, rope_cache) with the new tokens written.
    """
    x = x.astype(self.dtype)
    q_nope, q_rope = self._queries(x, positions)
    latent, k_rope = self._latent(x, positions)
    rows = jnp.arange(x.shape[0])[:, None]  # [B, 1]
    latent_cache = latent_cache.at[rows, positions].set(
        latent.astype(latent_cache.dtype))
    rope_cache = rope_cache.at[rows, positions].set(
        k_rope.astype(rope_cache.dtype))
    w_uk, w_uv = jnp.split(self._w('wkv_b'), [self.mla.qk_nope_head_dim],
                           axis=-1)  # [R, H, Dn], [R, H, Dv]
    # q_nope·(c·W_UK)ᵀ = (q_nope·W_UKᵀ)·cᵀ: a query in latent space.
    q_latent = jnp.einsum('blhk,rhk->blhr', q_nope, w_uk)  # [B, L, H, R]
    c, k_r = latent_cache.astype(self.dtype), rope_cache.astype(self.dtype)
    scores = (jnp.einsum('blhr,bmr->bhlm', q_latent, c) +
              jnp.einsum('blhk,bmk->bhlm', q_rope, k_r)) * self.scale
    slots = jnp.arange(c.shape[1])
    visible = slots[None, None, :] <= positions[:, :, None]  # [B, L, M]
    weights = _softmax(scores, visible[:, None], self.dtype)
    # Σ w·(c·W_UV) = (Σ w·c)·W_UV: the weighted sum stays in latent space.
    out_latent = jnp.einsum('bhlm,bmr->blhr', weights, c)
    out = jnp.einsum('blhr,rhk->blhk', out_latent, w_uv)
    return self._out(out), latent_cache, rope_cache

