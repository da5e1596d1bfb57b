"""Models built from moe_jax layers."""

from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM
from moe_jax.models.kv_cache import KVCache
