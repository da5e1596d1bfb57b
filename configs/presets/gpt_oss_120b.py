"""gpt-oss-120b (OpenAI 2025): 128 clamped-SwiGLU experts with biases,
top-4, MoE in every layer; attention with sinks and q/k/v/o biases,
alternating 128-token windows and full attention.

Command:
  python -m moe_jax.inspect --config=configs/presets/gpt_oss_120b.py --mesh=data:8,expert:8
Published figures:
  - OpenAI, "gpt-oss-120b & gpt-oss-20b Model Card", arXiv:2508.10925
    (Aug 2025): 116.8B total parameters, 5.1B active per token, 36 layers,
    128 experts, top-4, residual width 2880, 64 query heads of width 64, 8
    kv heads, banded 128-token windows alternating with full attention,
    learned attention sinks, the 201,088-token o200k_harmony vocabulary.
  - Shape and constants: transformers 5.23's GptOssConfig, whose defaults
    are this model (intermediate_size 2880, RMSNorm ε 1e-5, RoPE θ 150000,
    attention_bias true, swiglu_alpha 1.702, swiglu_limit 7.0, untied
    embeddings, layer_types sliding in even layers, rope_scaling YaRN with
    factor 32 over 4096 positions, β 32 / 1, truncate false).
  moe_jax counts 116.83B total and 5.71B active; the model card's active
  count leaves out the input embedding (a lookup, V·D = 0.58B), and
  5.71B - 0.58B = 5.13B (tests/test_models_presets.py).
Left out: nothing that holds parameters (YaRN, factor 32 over 4096
  positions, is model.rope_scaling and adds none). The released weights are MXFP4 (the converter refuses them; dequantize first). Routing:
  softmax over the top-4 router logits is router='topk' (renormalize);
  gpt-oss trains dropless (add --config.moe.dispatcher=dropless to match).
Tiny variant (same pattern: 64 experts, top-4, 16 heads / 2 kv heads): :tiny
"""

from moe_jax.config.presets import GPT_OSS_MODEL, GPT_OSS_MOE, get_preset


def get_config(arg: str | None = None):
  return get_preset(model=dict(GPT_OSS_MODEL, num_layers=36),
                    moe=dict(GPT_OSS_MOE, num_experts=128), arg=arg)
