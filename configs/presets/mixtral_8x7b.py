"""Mixtral 8x7B (Mistral AI, Jiang et al. 2024): 8 SwiGLU experts, top-2,
MoE in every layer, grouped-query attention.

Command:
  python -m moe_jax.inspect --config=configs/presets/mixtral_8x7b.py --mesh=data:8,expert:8
Published figures:
  - Shape (Jiang et al. 2024, "Mixtral of Experts", arXiv:2401.04088,
    Table 1): dim 4096, 32 layers, head_dim 128, hidden_dim 14336, 32 heads,
    8 kv heads, vocab 32000, 8 experts, top-2.
  - Norm ε 1e-5 and RoPE θ 1e6: config.json of mistralai/Mixtral-8x7B-v0.1
    on Hugging Face (untied embeddings: tie_word_embeddings false).
  - 46.7B total parameters, 12.9B used per token (Mistral AI's release post
    "Mixtral of experts", Dec 2023).
  moe_jax counts 46.70B total and 12.88B active (tests/test_models_presets.py).
Left out: the sliding-window attention of Mistral 7B (no parameters; Mixtral
  itself uses full attention). Routing: Mixtral's softmax over the top-2
  logits is router='topk'; it trains dropless (add
  --config.moe.dispatcher=dropless to match; the default is 'index', with a
  capacity factor, as in every config).
Tiny variant (same pattern, 8 heads / 2 kv heads, D=64): :tiny
"""

from moe_jax.config.presets import get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=32000, d_model=4096, num_layers=32, num_heads=32,
                 num_kv_heads=8, d_ff=14336, moe_every=1, norm_eps=1e-5,
                 rope_theta=1e6),
      moe=dict(num_experts=8, top_k=2, router='topk', expert_type='swiglu',
               d_ff=14336),
      arg=arg)
