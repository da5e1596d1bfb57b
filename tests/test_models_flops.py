"""The training FLOPs count and the peak table behind the logged MFU."""

import pytest

from moe_jax.models import flops
from moe_jax.models.config import ModelConfig
from moe_jax.core.config import MoEConfig


def test_palm_count_by_hand():
  # 1000 active params of which a 10 x 8 embedding lookup; 2 layers of
  # 4 heads of width 2 over L = 16: 6 * 920 + 12 * 2 * 4 * 2 * 16.
  assert flops.train_flops_per_token(
      1000, 80, tied_embeddings=False, num_layers=2, num_heads=4, head_dim=2,
      seq_len=16) == 6 * 920 + 3072
  # A tied embedding is the output head's matmul too: it counts.
  assert flops.train_flops_per_token(
      1000, 80, tied_embeddings=True, num_layers=2, num_heads=4, head_dim=2,
      seq_len=16) == 6 * 1000 + 3072


def test_for_model_leaves_out_lookups():
  config = ModelConfig(vocab_size=10, d_model=8, num_layers=2, num_heads=4,
                       d_ff=8, max_len=16, position='learned',
                       moe=MoEConfig(num_experts=4, d_ff=6))
  # The learned position table (16 x 8) is a lookup like the embedding.
  assert flops.for_model(config, 1000, 16) == (
      6 * (1000 - 128 - 80) + 12 * 2 * 4 * 2 * 16)


def test_latent_attention_counts_its_own_widths():
  # MLA: queries meet keys over Dn + Dr = 6 + 4 and values are Dv = 5 wide:
  # per layer 2·H·10·L (Q·Kᵀ) + 2·H·5·L (weights·V) forward, ×3 in all.
  config = ModelConfig(vocab_size=10, d_model=8, num_layers=2, num_heads=4,
                       d_ff=8, max_len=16, moe=MoEConfig(num_experts=4, d_ff=6),
                       mla=dict(kv_lora_rank=12, qk_nope_head_dim=6,
                                qk_rope_head_dim=4, v_head_dim=5))
  assert flops.for_model(config, 1000, 16) == (
      6 * (1000 - 80) + 3 * 2 * (4 * 10 * 16 + 4 * 5 * 16) * 2)


@pytest.mark.parametrize('kind, peak', [
    ('NVIDIA H100 80GB HBM3', 989e12), ('NVIDIA A100-SXM4-80GB', 312e12),
    ('TPU v5 lite', 197e12), ('TPU v5p', 459e12), ('TPU v6 lite', 918e12),
    ('TPU v4', 275e12), ('NVIDIA B200', 2250e12), ('cpu', None)])
def test_peak_by_device_kind(kind, peak):
  assert flops.device_peak_flops(kind) == peak


def test_configured_peak_wins():
  assert flops.peak_flops_per_device(5e9) == 5e9
  assert flops.peak_flops_per_device(0.0) is None  # This CPU: no entry.
