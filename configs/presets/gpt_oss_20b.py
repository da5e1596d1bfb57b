"""gpt-oss-20b (OpenAI 2025): gpt-oss-120b's architecture
(configs/presets/gpt_oss_120b.py says what it is and what is left out)
with 24 layers and 32 experts, top-4.

Command:
  python -m moe_jax.inspect --config=configs/presets/gpt_oss_20b.py --mesh=data:8,expert:8
Published figures:
  - OpenAI, "gpt-oss-120b & gpt-oss-20b Model Card", arXiv:2508.10925
    (Aug 2025): 20.9B total parameters, 3.6B active per token, 24 layers,
    32 experts, top-4; the other widths as gpt-oss-120b's.
  moe_jax counts 20.91B total and 4.19B active; without the input
  embedding (0.58B), as the model card counts, 3.61B
  (tests/test_models_presets.py).
Tiny variant (same pattern: 32 experts, top-4, 16 heads / 2 kv heads): :tiny
"""

from moe_jax.config.presets import GPT_OSS_MODEL, GPT_OSS_MOE, get_preset


def get_config(arg: str | None = None):
  return get_preset(model=dict(GPT_OSS_MODEL, num_layers=24),
                    moe=dict(GPT_OSS_MOE, num_experts=32), arg=arg)
