"""Mixtral 8x22B (Mistral AI, 2024): Mixtral 8x7B's design, wider and deeper.

Command:
  python -m moe_jax.inspect --config=configs/presets/mixtral_8x22b.py --mesh=data:8,expert:8
Published figures:
  - Shape: config.json of mistralai/Mixtral-8x22B-v0.1 on Hugging Face:
    hidden 6144, 56 layers, 48 heads, 8 kv heads, intermediate 16384,
    vocab 32000, 8 experts, top-2, RoPE θ 1e6, RMSNorm ε 1e-5, untied
    embeddings.
  - 141B total parameters, 39B active (Mistral AI's release post
    "Cheaper, Better, Faster, Stronger", Apr 2024).
  moe_jax counts 140.62B total and 39.15B active (tests/test_models_presets.py).
Left out: nothing that holds parameters. The later v0.3 tokenizer has
  V = 32768 (+3.2M parameters; --config.model.vocab_size=32768).
Tiny variant (same pattern, 12 heads / 2 kv heads, D=96): :tiny
"""

from moe_jax.config.presets import get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=32000, d_model=6144, num_layers=56, num_heads=48,
                 num_kv_heads=8, d_ff=16384, moe_every=1, norm_eps=1e-5,
                 rope_theta=1e6),
      moe=dict(num_experts=8, top_k=2, router='topk', expert_type='swiglu',
               d_ff=16384),
      arg=arg)
