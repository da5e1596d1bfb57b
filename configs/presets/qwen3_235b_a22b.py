"""Qwen3-235B-A22B (Qwen team 2025): 128 experts, top-8, in every layer;
64 query heads over 4 key/value heads, per-head QK-norm.

Command:
  python -m moe_jax.inspect --config=configs/presets/qwen3_235b_a22b.py --mesh=data:8,expert:8
Published figures:
  - Model card of Qwen/Qwen3-235B-A22B (as quoted by
    https://b-lab.team/en/content/b76fff15-f533-46f7-828f-0254e65ffc36):
    235B parameters in total, 22B activated (234B non-embedding); 94
    layers, 64 query and 4 key/value heads, 128 experts of which 8 are
    activated; 32,768 tokens natively, 131,072 with YaRN.
  - Its config.json (as in MindSpeed-RL's configs/model/qwen3_235b_a22b.yaml,
    https://gitcode.com/Ascend/MindSpeed-RL): hidden 4096, head width
    (kv_channels) 128, moe_intermediate_size 1536, vocab 151936, RoPE θ 1e6,
    RMSNorm ε 1e-6, QK-norm, norm_topk_prob true, untied embeddings.
  moe_jax counts 235.09B total and 22.19B active (tests/test_models_presets.py).
Left out: nothing that holds parameters; no rope_scaling, as released
  (see qwen3_30b_a3b.py for YaRN).
Tiny variant (same pattern: 64 experts, top-8, 16 query heads on one kv
  head, H·Dh = 2·D): :tiny
"""

from moe_jax.config.presets import get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=151936, d_model=4096, num_layers=94, num_heads=64,
                 num_kv_heads=4, head_dim=128, d_ff=12288, moe_every=1,
                 norm_eps=1e-6, rope_theta=1e6, qk_norm='per_head'),
      moe=dict(num_experts=128, top_k=8, router='topk', expert_type='swiglu',
               d_ff=1536, router_options=dict(topk=dict(renormalize=True))),
      arg=arg)
