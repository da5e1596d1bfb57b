"""DeepSeekMoE 16B (Dai et al. 2024): 2 shared + 64 fine-grained routed
experts, top-6, the first layer dense.

Command:
  python -m moe_jax.inspect --config=configs/presets/deepseek_moe_16b.py --mesh=data:8,expert:8
Published figures:
  - Dai et al. 2024, "DeepSeekMoE: Towards Ultimate Expert Specialization
    in Mixture-of-Experts Language Models", arXiv:2401.06066, Sec. 5.1 and
    Appendix A: 28 layers, hidden 2048, 16 heads; every FFN but the first
    is MoE, with 2 shared and 64 routed experts, each a quarter of a
    standard FFN (1408 wide), 6 routed per token; 16.4B total, 2.8B
    activated parameters.
  - config.json of deepseek-ai/deepseek-moe-16b-base: vocab 102400, dense
    intermediate 10944, first_k_dense_replace 1, norm_topk_prob false
    (gates are the softmax probabilities, not renormalised), RMSNorm ε
    1e-6, RoPE θ 10000, untied embeddings.
  moe_jax counts 16.38B total and 2.83B active (tests/test_models_presets.py).
Left out: nothing that holds parameters (DeepSeek-V2's MLA is not part of
  this model).
Tiny variant (same pattern: dense layer 0, 2 shared + 64 routed, top-6): :tiny
"""

from moe_jax.config.presets import get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=102400, d_model=2048, num_layers=28, num_heads=16,
                 d_ff=10944, moe_every=1, first_dense_layers=1,
                 norm_eps=1e-6),
      moe=dict(num_experts=64, top_k=6, router='topk', expert_type='swiglu',
               d_ff=1408, num_shared_experts=2,
               router_options=dict(topk=dict(renormalize=False))),
      arg=arg)
