"""DeepSeek-V2-Lite (DeepSeek-AI 2024): multi-head latent attention without
a query latent; 2 shared + 64 routed experts, top-6, the first layer dense.

Command:
  python -m moe_jax.inspect --config=configs/presets/deepseek_v2_lite.py --mesh=data:8,expert:8
Published figures:
  - DeepSeek-AI 2024, "DeepSeek-V2: A Strong, Economical, and Efficient
    Mixture-of-Experts Language Model", arXiv:2405.04434, and the model
    card of deepseek-ai/DeepSeek-V2-Lite (as quoted by
    https://promptlayer.com/models/deepseek-v2-lite-fa0e and the card's
    README): 15.7B total, 2.4B activated parameters; 27 layers, hidden
    2048, 16 heads of 128, KV compression 512, queries not compressed,
    decoupled RoPE width 64; every FFN but the first is MoE with 2 shared
    and 64 routed experts of width 1408, 6 routed per token.
  - config.json of the V2-Lite family (deepseek-ai/DeepSeek-Coder-V2-Lite-Base,
    https://huggingface.co/deepseek-ai/DeepSeek-Coder-V2-Lite-Base): vocab
    102400, intermediate_size 10944, v_head_dim 128, softmax scores,
    topk_method greedy, norm_topk_prob false, routed_scaling_factor 1.0,
    RMSNorm ε 1e-6, RoPE θ 10000, untied embeddings, rope_scaling YaRN
    (factor 40, original 4096, β 32 / 1, mscale = mscale_all_dim = 0.707).
  moe_jax counts 15.71B total and 2.66B active (tests/test_models_presets.py);
  the published 2.4B activated leaves out the input embedding (with it
  excluded moe_jax counts 2.45B).
Left out: nothing that holds parameters.
Tiny variant (same pattern: MLA without a query latent, YaRN, dense layer 0,
  2 shared + 64 routed, top-6): :tiny
"""

from moe_jax.config.presets import deepseek_mla, deepseek_yarn, get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=102400, d_model=2048, num_layers=27, num_heads=16,
                 d_ff=10944, moe_every=1, first_dense_layers=1,
                 norm_eps=1e-6, rope_theta=1e4,
                 mla=deepseek_mla(q_lora_rank=None),
                 rope_scaling=deepseek_yarn(mscale=0.707)),
      moe=dict(num_experts=64, top_k=6, router='deepseek',
               expert_type='swiglu', d_ff=1408, num_shared_experts=2,
               router_options=dict(deepseek=dict(
                   score='softmax', renormalize=False,
                   routed_scaling_factor=1.0))),
      arg=arg)
