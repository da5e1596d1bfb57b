"""Generation with a KV cache: prefill, jitted decoding, sampling."""

from moe_jax.generation.decode import (MOE_DECODE, decode_moe_config,
                                       decode_step, pad_prompts, prefill)
from moe_jax.generation.generate import Generated, generate
from moe_jax.generation.sampling import GREEDY, Sampling, filter_logits, sample

__all__ = ['MOE_DECODE', 'decode_moe_config', 'decode_step', 'pad_prompts',
           'prefill', 'Generated', 'generate', 'GREEDY', 'Sampling',
           'filter_logits', 'sample']
