"""Decoder-only transformer LM with interleaved MoE FFNs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moe_jax.core.dispatch import ExpertInputs
from moe_jax.core.experts import EXPERT_FNS, is_gated
from moe_jax.errors import UserInputError
from moe_jax.layers.moe import MoELayer
from moe_jax.layers.params import param, scaled_init
from moe_jax.models.attention import CausalSelfAttention
from moe_jax.models.config import ModelConfig
from moe_jax.models.kv_cache import KVCache
from moe_jax.models.mla import MultiHeadLatentAttention
# RMSNorm lives in norm.py (QK-norm and MLA's latent norms use it too);
# importable from here as before.
from moe_jax.models.norm import RMSNorm
from moe_jax.parallel.fsdp import whole_over_data

EMBED_AXES = ('vocab', 'embed')  # The token embedding [V, D].


class DenseFFN(nnx.Module):
  """The dense FFN: the expert MLP with a single expert, so a dense layer and
  an MoE layer compute exactly the same function per token."""

  def __init__(self, d_model: int, d_ff: int, expert_type: str,
               init_scale: float, *, rngs: nnx.Rngs, dtype=jnp.float32):
    self.expert_type = expert_type
    self.dtype = dtype
    init = scaled_init(init_scale)
    self.wi = param(rngs, init, (d_model, d_ff), ('embed', 'mlp'))
    if is_gated(expert_type):
      self.wi_gate = param(rngs, init, (d_model, d_ff), ('embed', 'mlp'))
    self.wo = param(rngs, init, (d_ff, d_model), ('mlp', 'embed'))

  def __call__(self, x: jax.Array) -> jax.Array:
    names = ['wi', 'wo'] + (['wi_gate'] if is_gated(self.expert_type) else [])
    params = {n: getattr(self, n)[...][None] for n in names}  # E = 1
    flat = x.astype(self.dtype).reshape(1, -1, x.shape[-1])
    y = EXPERT_FNS[self.expert_type](params, ExpertInputs(flat))
    return y.reshape(x.shape)


class Block(nnx.Module):
  """Pre-norm block: x + attn(norm(x)), then x + ffn(norm(x))."""

  def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
    c = config
    dt = c.compute_dtype
    self.attn_norm = RMSNorm(c.d_model, rngs=rngs, eps=c.norm_eps)
    if c.mla is not None:  # Same calls and cache slots (models/mla.py).
      self.attn = MultiHeadLatentAttention(
          c.d_model, c.num_heads, c.mla, init_scale=c.init_scale, rngs=rngs,
          dtype=dt, rope_theta=c.rope_theta, rope_scaling=c.rope_scaling)
    else:
      self.attn = CausalSelfAttention(
          c.d_model, c.num_heads, rope=c.position == 'rope',
          init_scale=c.init_scale, rngs=rngs, dtype=dt,
          num_kv_heads=c.kv_heads, rope_theta=c.rope_theta,
          qkv_bias=c.qkv_bias, sliding_window=c.layer_window(layer),
          head_dim=c.head_width, qk_norm=c.qk_norm, norm_eps=c.norm_eps,
          rope_scaling=c.rope_scaling, sinks=c.attention_sinks,
          out_bias=c.attn_out_bias)
    self.ffn_norm = RMSNorm(c.d_model, rngs=rngs, eps=c.norm_eps)
    self.is_moe = c.is_moe_layer(layer)
    if self.is_moe:
      self.ffn = MoELayer(c.moe, c.d_model, rngs=rngs, dtype=dt)
    else:
      self.ffn = DenseFFN(c.d_model, c.d_ff, c.moe.expert_type, c.init_scale,
                          rngs=rngs, dtype=dt)

  def __call__(self, x, *, train: bool, key, return_routing: bool = False,
               token_ids=None, replay=None, balance_fraction=None):
    x = x + self.attn(self.attn_norm(x)).astype(x.dtype)
    h = self.ffn_norm(x)
    aux = {}
    if self.is_moe:
      # token_ids: for routers that read the vocabulary id (hash routing).
      # replay: [B, L, K] recorded choices (router replay), or None.
      # balance_fraction: the step's f for a micro-batch (moe_apply), or None.
      h, aux = self.ffn(h, train=train, key=key, return_routing=return_routing,
                        token_ids=token_ids, replay=replay,
                        balance_fraction=balance_fraction)
    else:
      h = self.ffn(h)
    return x + h.astype(x.dtype), aux

  def cached(self, x, positions, k_cache, v_cache, *, moe_config=None,
             token_ids=None):
    """The block on new tokens over its KV cache (see TransformerLM.cached).

    Returns (x [B, L, D], k_cache, v_cache).
    """
    a, k_cache, v_cache = self.attn.cached(self.attn_norm(x), positions,
                                           k_cache, v_cache)
    x = x + a.astype(x.dtype)
    h = self.ffn_norm(x)
    if self.is_moe:
      h, _ = self.ffn(h, train=False, token_ids=token_ids, config=moe_config)
    else:
      h = self.ffn(h)
    return x + h.astype(x.dtype), k_cache, v_cache


class TransformerLM(nnx.Module):
  """Tokens [B, L] -> next-token logits [B, L, V] (float32) and MoE aux."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    # A tied embedding is also the output head, so it starts at the head's
    # scale (variance init_scale/D) to keep the first logits O(1).
    embed_init = (nnx.initializers.normal(c.init_scale ** 0.5 / c.d_model ** 0.5)
                  if c.tie_embeddings else nnx.initializers.normal(1.0))
    self.embed = param(rngs, embed_init, (c.vocab_size, c.d_model),
                       EMBED_AXES)
    if c.position == 'learned':
      self.pos_embed = param(rngs, nnx.initializers.normal(0.02),
                             (c.max_len, c.d_model), (None, 'embed'))
    self.blocks = nnx.List(
        [Block(c, i, rngs=rngs) for i in range(c.num_layers)])
    self.final_norm = RMSNorm(c.d_model, rngs=rngs, eps=c.norm_eps)
    if not c.tie_embeddings:
      self.head = param(rngs, scaled_init(c.init_scale),
                        (c.d_model, c.vocab_size), ('embed', 'vocab'))

  def update_router_biases(self, aux: dict[str, jax.Array]) -> None:
    """Loss-free balancing: each MoE layer with a bias moves it from its
    'moe_<i>/expert_load' in a training step's aux."""
    for i, block in enumerate(self.blocks):
      if block.is_moe and block.ffn.config.has_router_bias:
        prefix = f'moe_{i}/'
        block.ffn.update_router_bias(
            {k[len(prefix):]: v for k, v in aux.items() if k.startswith(prefix)})

  def __call__(self, tokens: jax.Array, *, train: bool = False,
               key: jax.Array | None = None, return_routing: bool = False,
               replay: dict[int, jax.Array] | None = None,
               balance_fraction: dict[int, jax.Array] | None = None):
    """Returns (logits float32 [B, L, V], aux).

    replay: {MoE block index: int [B, L, K] expert choices} to take instead
    of those layers' routers' own (router replay; moe_jax/analysis/replay.py
    builds it from a routing trace); other MoE layers route as usual.
    balance_fraction: {MoE block index: float [N] the share of the whole
    training step's choices each router output got}, for a micro-batch of
    gradient accumulation (moe_jax/train/accumulate.py); None: each layer's
    balance loss pools this batch alone.

    aux['aux_loss'] is the weighted router loss summed over MoE layers (add
    it to the task loss); aux['moe_<i>/<metric>'] are layer i's metrics.
    With return_routing, aux['routing'][i] is MoE layer i's routing decision
    (see moe_apply); the logits and every other aux entry are unchanged.
    """
    x = self._embed(tokens)
    aux = {'aux_loss': jnp.zeros((), jnp.float32)}
    routing = {}
    replay = replay or {}
    moe_blocks = [i for i, b in enumerate(self.blocks) if b.is_moe]
    unknown = sorted(set(replay) - set(moe_blocks))
    if unknown:
      raise UserInputError(
          f'replay names block(s) {unknown}, which are not MoE layers of this '
          f'model (its MoE blocks: {moe_blocks}); replay a trace of a model '
          'with the same layers.')
    for i, block in enumerate(self.blocks):
      block_key = None if key is None else jax.random.fold_in(key, i)
      x, block_aux = block(x, train=train, key=block_key,
                           return_routing=return_routing, token_ids=tokens,
                           replay=replay.get(i),
                           balance_fraction=(balance_fraction or {}).get(i))
      if 'routing' in block_aux:
        routing[i] = block_aux.pop('routing')
      if block_aux:
        aux['aux_loss'] += block_aux.pop('aux_loss')
        aux.update({f'moe_{i}/{k}': v for k, v in block_aux.items()})
    if return_routing:
      aux['routing'] = routing
    return self._logits(x), aux

  def _embed(self, tokens, positions=None):
    """Token (and learned position) embeddings [B, L, D] in compute dtype.

    positions: int [B, L] absolute positions; None: 0..L-1 for every row.
    """
    c = self.config
    # Under FSDP the table is gathered for the lookup (parallel/fsdp.py).
    x = whole_over_data(self.embed[...], EMBED_AXES)[tokens]  # [B, L, D]
    if c.position == 'learned':
      table = self.pos_embed[...]
      x = x + (table[:tokens.shape[-1]] if positions is None
               else table[positions])
    return x.astype(c.compute_dtype)

  def _logits(self, x):
    """Final norm and output head: [..., D] -> float32 [..., V]."""
    c = self.config
    dt = c.compute_dtype
    x = self.final_norm(x)
    if c.tie_embeddings:
      logits = jnp.einsum('...d,vd->...v', x, self.embed[...].astype(dt))
    else:
      logits = jnp.einsum('...d,dv->...v', x, self.head[...].astype(dt))
    return logits.astype(jnp.float32)

  def cached(self, tokens: jax.Array, positions: jax.Array, cache: KVCache, *,
             moe_config=None, select: jax.Array | None = None
             ) -> tuple[jax.Array, KVCache]:
    """Next-token logits of new tokens, reading and extending a KV cache.

    The incremental form of __call__ (inference only: no aux, no noise):
    prefill runs it on the prompts, then each decode step on one token per
    sequence. With every earlier position in the cache, its logits equal
    __call__'s at the same positions (tests/test_generate.py).

    Args:
      tokens: int [B, L] the new tokens.
      positions: int [B, L] their absolute positions; each row's earlier
        positions must already be in the cache (see
        CausalSelfAttention.cached for why right-padding keeps this true).
      cache: the KVCache; its length bounds the positions.
      moe_config: the MoEConfig the MoE layers route with (same parameters,
        e.g. the dropless dispatcher at decode); None: the model's own.
      select: optional int [B]: only the logits at index select[b] of each
        row, [B, V], sparing the head's [B, L, V] on a long prompt.

    Returns:
      (float32 logits [B, L, V], or [B, V] with select; the updated cache).
    """
    x = self._embed(tokens, positions)
    ks, vs = [], []
    for block, k_cache, v_cache in zip(self.blocks, cache.k, cache.v):
      x, k_cache, v_cache = block.cached(x, positions, k_cache, v_cache,
                                         moe_config=moe_config,
                                         token_ids=tokens)
      ks.append(k_cache)
      vs.append(v_cache)
    if select is not None:
      x = jnp.take_along_axis(x, select[:, None, None], axis=1)[:, 0]
    return self._logits(x), KVCache(tuple(ks), tuple(vs))
