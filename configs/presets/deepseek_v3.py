"""DeepSeek-V3 (DeepSeek-AI 2024): multi-head latent attention with a query
latent; 1 shared + 256 routed experts, top-8 within 4 of 8 groups, sigmoid
gates with a loss-free balancing bias; the first 3 layers dense.

Command:
  python -m moe_jax.inspect --config=configs/presets/deepseek_v3.py --mesh=data:8,expert:8
Published figures:
  - DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", arXiv:2412.19437,
    abstract and Sec. 4.2: 671B total parameters, 37B activated per token;
    61 layers, hidden 7168, 128 heads of 128, KV compression 512, query
    compression 1536, decoupled RoPE width 64; all FFNs but the first
    three are MoE with 1 shared and 256 routed experts of width 2048, 8
    routed per token on at most 4 nodes (groups).
  - The Hugging Face repository holds 685B: the 671B of the main model and
    14B of the multi-token-prediction (MTP) module (model card, as quoted in
    https://hf.global-rail.com/deepseek-ai/DeepSeek-V3-0324/discussions/32).
    The 671B here is the main model; MTP is left out (transformers' forward
    and our converter skip it too: moe_jax/convert/hf_deepseek.py).
  - config.json of deepseek-ai/DeepSeek-V3 (as in DeepSeek's
    inference/configs/config_671B.json and
    https://gitcode.com/cann/cann-recipes-train, llm_rl/deepseek/verl_patches/config.json):
    vocab 129280, intermediate_size 18432, n_group 8, topk_group 4,
    routed_scaling_factor 2.5, norm_topk_prob true, sigmoid scores,
    topk_method noaux_tc, RMSNorm ε 1e-6, RoPE θ 10000, untied embeddings,
    rope_scaling YaRN (factor 40, original 4096, β 32 / 1, mscale =
    mscale_all_dim = 1.0).
  moe_jax counts 671.03B total and 37.55B active, 36.63B without the input
  embedding (a lookup), which is how DeepSeek counts the 37B
  (tests/test_models_presets.py; deepseek_v2_lite.py shows why).
Left out: the MTP module (above).
Tiny variant (same pattern: MLA with a query latent, YaRN, 3 dense layers,
  1 shared + 64 routed in 8 groups, top-8): :tiny
"""

from moe_jax.config.presets import deepseek_mla, deepseek_yarn, get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=129280, d_model=7168, num_layers=61, num_heads=128,
                 d_ff=18432, moe_every=1, first_dense_layers=3,
                 norm_eps=1e-6, rope_theta=1e4,
                 mla=deepseek_mla(q_lora_rank=1536),
                 rope_scaling=deepseek_yarn(mscale=1.0)),
      moe=dict(num_experts=256, top_k=8, router='deepseek',
               expert_type='swiglu', d_ff=2048, num_shared_experts=1,
               router_options=dict(deepseek=dict(
                   score='sigmoid', n_group=8, topk_group=4,
                   group_score='top2_sum', renormalize=True,
                   routed_scaling_factor=2.5, bias_update_rate=1e-3))),
      arg=arg)
