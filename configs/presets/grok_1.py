"""Grok-1 (xAI 2024): 8 experts, top-2, every layer, grouped-query
attention, tied embeddings.

Command:
  python -m moe_jax.inspect --config=configs/presets/grok_1.py --mesh=data:8,expert:8
Published figures (xAI, "Open Release of Grok-1", Mar 2024, and the
README and run.py of the xai-org/grok-1 repository): 314B parameters, 8
experts with 2 used per token ("25% of the weights active on a given
token"), 64 layers, 48 query heads and 8 key/value heads of width 128,
embedding size 6144, vocabulary 131072, rotary embeddings; widening factor 8,
which the released code turns into a gated FFN of width
int(8·6144)·2//3 = 32768 (checked 2026-11-28: ffn_size in the repository's
model.py computes int(widening_factor·emb_size)·2//3, rounded up to a
multiple of 8). The output layer reuses the input embedding.
  moe_jax counts 315.68B total (+0.5%) and 83.76B active (26.5%: the experts
  are 25% active, attention and embeddings 100%).
Left out: the extra post-attention and post-FFN RMSNorms (2·6144 per layer,
  0.8M in all), attention-logit soft-capping and the embedding/output
  multipliers (no parameters).
Tiny variant (same pattern: 12 heads / 2 kv heads, tied): :tiny
"""

from moe_jax.config.presets import get_preset


def get_config(arg: str | None = None):
  return get_preset(
      model=dict(vocab_size=131072, d_model=6144, num_layers=64, num_heads=48,
                 num_kv_heads=8, d_ff=32768, moe_every=1, norm_eps=1e-5,
                 tie_embeddings=True),
      moe=dict(num_experts=8, top_k=2, router='topk', expert_type='swiglu',
               d_ff=32768),
      arg=arg)
