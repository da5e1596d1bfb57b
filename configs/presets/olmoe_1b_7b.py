"""OLMoE-1B-7B (Muennighoff et al. 2024): 64 experts, top-8, every layer.

Command:
  python -m moe_jax.inspect --config=configs/presets/olmoe_1b_7b.py --mesh=data:8,expert:8
Published figures:
  - Muennighoff et al. 2024, "OLMoE: Open Mixture-of-Experts Language
    Models", arXiv:2409.02060, Table 1 and the pretraining table in its
    appendix: 6.9B total, 1.3B active parameters; 16 layers, d_model 2048,
    16 heads, 64 experts of width 1024, 8 per token, QK-norm, dropless.
    Its QK-norm is an RMSNorm over the whole q and k projections
    (model.qk_norm='all_heads'; 16·2·2048 = 65,536 parameters).
  - config.json of allenai/OLMoE-1B-7B-0924: vocab 50304, norm_topk_prob
    false, RMSNorm ε 1e-5, RoPE θ 10000, untied embeddings.
  moe_jax counts 6.92B total and 1.28B active (tests/test_models_presets.py).
Tiny variant (same pattern: 64 experts, top-8): :tiny
"""

from moe_jax.config.presets import get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=50304, d_model=2048, num_layers=16, num_heads=16,
                 d_ff=1024, moe_every=1, norm_eps=1e-5,
                 qk_norm='all_heads'),
      moe=dict(num_experts=64, top_k=8, router='topk', expert_type='swiglu',
               d_ff=1024, router_options=dict(topk=dict(renormalize=False))),
      arg=arg)
