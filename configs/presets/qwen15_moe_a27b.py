"""Qwen1.5-MoE-A2.7B (Qwen team 2024): 60 routed experts, top-4, plus a
sigmoid-gated shared expert, in every layer.

Command:
  python -m moe_jax.inspect --config=configs/presets/qwen15_moe_a27b.py --mesh=data:8,expert:8
Published figures:
  - Qwen team, "Qwen1.5-MoE: Matching 7B Model Performance with 1/3
    Activated Parameters" (release post, Mar 2024): 14.3B parameters in
    total, 2.7B activated; 64 fine-grained experts made from 8 FFNs, of
    which 4 are shared and 60 routed, 4 routed per token.
  - config.json of Qwen/Qwen1.5-MoE-A2.7B: hidden 2048, 24 layers, 16
    heads, 16 kv heads, moe_intermediate_size 1408,
    shared_expert_intermediate_size 5632 (= 4 × 1408: our 4 shared experts
    run as one FFN of that width), 60 experts, top-4, norm_topk_prob false,
    vocab 151936, RoPE θ 1e6, RMSNorm ε 1e-6, q/k/v biases, untied
    embeddings; the shared expert's output is scaled by
    sigmoid(x·w_s) (shared_expert_gate).
  moe_jax counts 14.32B total and 2.69B active (tests/test_models_presets.py).
Left out: nothing that holds parameters.
Tiny variant (same pattern: 60 routed top-4, 4 gated shared): :tiny
"""

from moe_jax.config.presets import get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=151936, d_model=2048, num_layers=24, num_heads=16,
                 d_ff=5632, moe_every=1, norm_eps=1e-6, rope_theta=1e6,
                 qkv_bias=True),
      moe=dict(num_experts=60, top_k=4, router='topk', expert_type='swiglu',
               d_ff=1408, num_shared_experts=4, shared_expert_gate=True,
               router_options=dict(topk=dict(renormalize=False))),
      arg=arg)
