"""Qwen3-30B-A3B (Qwen team 2025): 128 experts, top-8, in every layer;
grouped-query attention with heads wider than D/H and per-head QK-norm.

Command:
  python -m moe_jax.inspect --config=configs/presets/qwen3_30b_a3b.py --mesh=data:8,expert:8
Published figures:
  - Model card of Qwen/Qwen3-30B-A3B (as quoted by
    https://apxml.com/models/qwen3-30b-a3b and
    https://grokipedia.com/page/Qwen3-30B-A3B): 30.5B parameters in total,
    3.3B activated; 48 layers, 32 query and 4 key/value heads, 128 experts
    of which 8 are activated, no shared experts; 32,768 tokens natively,
    131,072 with YaRN.
  - Its config.json (as in MindSpeed-RL's configs/model/qwen3_30b_a3b.yaml,
    https://gitcode.com/Ascend/MindSpeed-RL): hidden 2048, head width
    (kv_channels) 128, moe_intermediate_size 768, vocab 151936, RoPE θ 1e6,
    QK-norm, norm_topk_prob true, untied embeddings; RMSNorm ε 1e-6.
  moe_jax counts 30.53B total and 3.35B active (tests/test_models_presets.py;
  the published 3.3B is 1.6% below it, with every width as in config.json).
Left out: nothing that holds parameters. The released config has no
  rope_scaling (YaRN is an option for long contexts; set model.rope_scaling
  as the card describes: factor 4, original_max_len 32768).
Tiny variant (same pattern: 64 experts, top-8, 8 query heads per kv head,
  H·Dh = 2·D): :tiny
"""

from moe_jax.config.presets import get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=151936, d_model=2048, num_layers=48, num_heads=32,
                 num_kv_heads=4, head_dim=128, d_ff=6144, moe_every=1,
                 norm_eps=1e-6, rope_theta=1e6, qk_norm='per_head'),
      moe=dict(num_experts=128, top_k=8, router='topk', expert_type='swiglu',
               d_ff=768, router_options=dict(topk=dict(renormalize=True))),
      arg=arg)
