"""Training FLOPs per token, and model FLOPs utilisation (MFU).

The count is PaLM's (Chowdhery et al. 2022, Appendix B):

  FLOPs per token = 6 · N_matmul + 12 · n_layers · H · Dh · L

* 6 · N_matmul: every parameter a token passes through is one multiply-add
  (2 FLOPs) in the forward pass and two in the backward pass (the gradients
  of the input and of the weight). N_matmul is the active parameter count of
  the run header (an MoE layer's experts count K/E of their size, K the
  expert passes per token) less the input embedding table, which is a
  lookup, not a matmul (unless it is tied to the output head, where it is
  used as a matmul once), and less a learned position table, also a lookup.
* 12 · n_layers · H · Dh · L: the attention scores Q·Kᵀ and the weighted sum
  of V, 2 · 2 · H · Dh · L FLOPs per token and layer in the forward pass, ×3
  with the backward. Like PaLM (and MaxText's causal count aside), it counts
  the whole L×L score matrix, not the causal half, so it is the work of a
  dense attention kernel.
  Multi-head latent attention (model.mla, models/mla.py) has queries meet
  keys over Dn + Dr and values Dv wide, so its term is
  6 · n_layers · H · (Dn + Dr + Dv) · L: the form training computes, keys
  and values expanded from the latent (their expansion, c·W_UKV, is a
  parameter matmul, counted in N_matmul). With Dn + Dr = Dv = Dh this is the
  12 · n_layers · H · Dh · L above.

MFU is achieved FLOP/s per device over the device's peak. The peaks are the
vendors' dense bf16 matmul figures (no sparsity), per chip; a float32 run is
read against the same peak, which is why its MFU is low. CPUs have no entry:
set train.peak_flops_per_device to get an MFU there.
"""

from __future__ import annotations

import jax

# Dense bf16 peak FLOP/s per chip, by a substring of jax's device_kind
# (checked in order, so the more specific names come first). Sources: the
# vendors' datasheets (Google Cloud TPU system architecture pages; NVIDIA
# A100, H100 SXM, H200 and B200 datasheets, dense, without 2:4 sparsity).
PEAK_FLOPS = (
    ('TPU v6 lite', 918e12),  # v6e (Trillium)
    ('TPU v5 lite', 197e12),  # v5e
    ('TPU v5p', 459e12),
    ('TPU v5', 459e12),
    ('TPU v4', 275e12),
    ('H200', 989e12),
    ('H100', 989e12),  # SXM; the PCIe card's peak is lower (756e12).
    ('A100', 312e12),
    ('B200', 2250e12),
)


def device_peak_flops(device_kind: str) -> float | None:
  """The table's peak for a jax device_kind, or None (e.g. a CPU)."""
  for name, peak in PEAK_FLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def peak_flops_per_device(configured: float = 0.0) -> float | None:
  """train.peak_flops_per_device when > 0, else the table's for device 0."""
  if configured > 0:
    return float(configured)
  return device_peak_flops(jax.devices()[0].device_kind)


def attention_flops_per_token(num_layers: int, num_heads: int, head_dim: int,
                              seq_len: int, value_dim: int | None = None
                              ) -> int:
  """6 · n_layers · H · (Dqk + Dv) · L, Dqk = head_dim and Dv = value_dim
  (default head_dim: 12 · n_layers · H · Dh · L; module docstring)."""
  value_dim = head_dim if value_dim is None else value_dim
  return 6 * num_layers * num_heads * (head_dim + value_dim) * seq_len


def train_flops_per_token(active_params: int, embedding_params: int, *,
                          tied_embeddings: bool, num_layers: int,
                          num_heads: int, head_dim: int, seq_len: int,
                          value_dim: int | None = None) -> int:
  """6 · N_matmul + attention (module docstring).

  active_params: the run header's active count (embedding included).
  embedding_params: V · D, the input embedding table's size.
  head_dim, value_dim: the query·key and the value width per head (MLA:
    Dn + Dr and Dv); value_dim None: head_dim.
  """
  matmul = active_params - (0 if tied_embeddings else embedding_params)
  return 6 * matmul + attention_flops_per_token(num_layers, num_heads,
                                                head_dim, seq_len, value_dim)


def for_model(config, active_params: int, seq_len: int) -> int:
  """train_flops_per_token for a ModelConfig and the header's active count."""
  lookups = config.max_len * config.d_model if config.position == 'learned' \
      else 0
  mla = config.mla
  return train_flops_per_token(
      active_params - lookups, config.vocab_size * config.d_model,
      tied_embeddings=config.tie_embeddings, num_layers=config.num_layers,
      num_heads=config.num_heads,
      head_dim=config.head_width if mla is None else mla.qk_head_dim,
      value_dim=None if mla is None else mla.v_head_dim, seq_len=seq_len)
