"""Architecture presets (configs/presets/*.py): set a published model's
shape on the default config, and shrink it to a `:tiny` twin.

A preset file only states the architecture; training fields (data, batch,
optimizer) stay the defaults, so a tiny preset trains on the byte data like
every other config.
"""

from __future__ import annotations

import ml_collections

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)

# The tiny twin's head width and the most experts it keeps (GShard's 2048
# would make even a tiny model large), and its longest window (tiny runs
# are 32 tokens: a longer one would never mask anything).
_TINY_HEAD_DIM = 8
_TINY_MAX_EXPERTS = 64
# Heads the tiny twin may have: two kv heads unless their groups would make
# more (Qwen3-235B's 16 query heads per kv head: then one kv head).
_TINY_MAX_HEADS = 16
_TINY_WINDOW = 8

# gpt-oss's architecture, both sizes (configs/presets/gpt_oss_*.py cite it);
# they differ in num_layers and num_experts only.
GPT_OSS_MODEL = dict(
    vocab_size=201088, d_model=2880, num_heads=64, num_kv_heads=8,
    head_dim=64, d_ff=2880, moe_every=1, norm_eps=1e-5, rope_theta=150000.0,
    qkv_bias=True, attn_out_bias=True, attention_sinks=True,
    sliding_window=128, full_attention_every=2,
    # The released YaRN (config.json rope_scaling; GptOssConfig's default).
    rope_scaling=dict(factor=32.0, original_max_len=4096, beta_fast=32.0,
                      beta_slow=1.0, truncate=False))
GPT_OSS_MOE = dict(top_k=4, router='topk', expert_type='swiglu_clamped',
                   d_ff=2880, use_bias=True)


# DeepSeek-V2/V3's latent attention widths and YaRN settings, which both
# DeepSeek presets share (configs/presets/deepseek_*.py cite them); V2-Lite
# has no query latent, and the two differ in YaRN's mscale.
def deepseek_mla(q_lora_rank: int | None) -> dict:
  return dict(kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
              v_head_dim=128, q_lora_rank=q_lora_rank)


def deepseek_yarn(mscale: float) -> dict:
  return dict(factor=40.0, original_max_len=4096, beta_fast=32.0,
              beta_slow=1.0, mscale=mscale, mscale_all_dim=mscale)

def preset_config(model: dict, moe: dict) -> ml_collections.ConfigDict:
  """The default config with these model.* and moe.* fields set.

  Routing that a published model trains without drops (Mixtral, DeepSeek,
  Qwen, OLMoE) still gets the default 'index' dispatcher here, with its
  capacity factor, like every other config. Set
  --config.moe.dispatcher=dropless to match (it runs expert-parallel too),
  or 'fused' for the capacity layout with the least token movement.
  """
  c = get_default_config()
  c.model.update(model)
  c.moe.update(moe)
  return c


def shrink_preset(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The `:tiny` twin: the same layer pattern, routing, head grouping,
  expert count (capped at 64) and width ratios, at D = 8 per head.

  Kept: top_k, router, moe_every, first_dense_layers, shared experts and
  their gate, tied embeddings, qkv biases, num_heads / num_kv_heads,
  d_ff / d_model and moe.d_ff / d_model, H·Dh / D where head_dim is set,
  MLA (at widths of 8 per head), RoPE scaling, and gpt-oss's sinks, biases
  and window pattern. Shrunk: layers (first dense ones + two MoE layers),
  heads (two kv heads, or one for groups of more than 8; a head_dim set
  apart from D/H becomes 8), the window (to 8 at most), V (256 bytes) and
  the training run (shrink_for_tests).
  """
  m, moe = c.model, c.moe
  group = m.num_heads // (m.num_kv_heads or m.num_heads)
  kv_heads = 2 if 2 * group <= _TINY_MAX_HEADS else 1
  heads = kv_heads * group
  d_model = heads * _TINY_HEAD_DIM
  if m.head_dim is not None:  # Qwen3, gpt-oss: H·Dh apart from D; keep D / (H·Dh).
    d_model = round(d_model * m.d_model / (m.num_heads * m.head_dim))
    m.head_dim = _TINY_HEAD_DIM
  if m.sliding_window is not None:
    m.sliding_window = min(m.sliding_window, _TINY_WINDOW)
  ratio = lambda width: max(1, round(width * d_model / m.d_model))
  moe_d_ff, d_ff = ratio(moe.d_ff), ratio(m.d_ff)
  shrink_for_tests(c)  # Data, batch and steps; its model sizes are replaced.
  m.d_model, m.num_heads, m.d_ff = d_model, heads, d_ff
  if m.num_kv_heads is not None:
    m.num_kv_heads = kv_heads
  if m.mla.kv_lora_rank:  # DeepSeek-V2/V3: the latents at 2 and 3 heads.
    m.mla.update(kv_lora_rank=2 * _TINY_HEAD_DIM,
                 qk_nope_head_dim=_TINY_HEAD_DIM,
                 qk_rope_head_dim=_TINY_HEAD_DIM, v_head_dim=_TINY_HEAD_DIM,
                 q_lora_rank=m.mla.q_lora_rank and 3 * _TINY_HEAD_DIM)
  m.num_layers = m.first_dense_layers + 2 * max(1, m.moe_every)
  m.vocab_size = 256
  moe.d_ff = moe_d_ff
  moe.num_experts = min(moe.num_experts, _TINY_MAX_EXPERTS)
  return c


def get_preset(model: dict, moe: dict, arg: str | None):
  """What a preset file's get_config returns: full size, or `:tiny`."""
  check_variant(arg)
  c = preset_config(model, moe)
  if arg == 'tiny':
    shrink_preset(c)
  return c
