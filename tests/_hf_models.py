"""Tiny random transformers MoE models of every family we convert, for the
torch tests (tests/*_hf_torch.py). Takes the transformers module as an
argument so that importing this file needs neither torch nor transformers;
the tests get both from import_torch.
"""

import numpy as np
import pytest

VOCAB = 64
_COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_attention_heads=4,
               num_key_value_heads=2, num_experts_per_tok=2,
               initializer_range=0.1, rms_norm_eps=1e-5, rope_theta=5e5,
               max_position_embeddings=64, tie_word_embeddings=False,
               eos_token_id=2)
# A window shorter than the tests' 24-token sequences.
_WINDOW = 8


def import_torch():
  """(torch, transformers); without them the calling test module skips."""
  torch = pytest.importorskip(
      'torch', reason='PyTorch is an optional test extra (pip install -r '
      'requirements-hf.txt) used only to build the reference HF models')
  transformers = pytest.importorskip(
      'transformers', reason='transformers is an optional test extra (pip '
      'install -r requirements-hf.txt)')
  return torch, transformers


def _configs(t):
  """name -> (model class, config) of each variant."""
  mixtral = dict(num_hidden_layers=2, intermediate_size=24,
                 num_local_experts=4, **_COMMON)
  # Qwen3-MoE: a dense first layer, Dh = 12 (not D/H = 8), per-head
  # QK-norm, renormalised gates.
  qwen3 = dict(num_hidden_layers=2, intermediate_size=40,
               moe_intermediate_size=12, num_experts=4, head_dim=12,
               decoder_sparse_step=1, mlp_only_layers=[0],
               norm_topk_prob=True, **_COMMON)
  return {
      'mixtral': (t.MixtralForCausalLM, t.MixtralConfig(**mixtral)),
      'mixtral_window': (t.MixtralForCausalLM, t.MixtralConfig(
          sliding_window=_WINDOW, **mixtral)),
      # A dense first layer, a gated shared expert 2x the routed width,
      # gates that are not renormalised.
      'qwen2_moe': (t.Qwen2MoeForCausalLM, t.Qwen2MoeConfig(
          num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=12,
          shared_expert_intermediate_size=24, num_experts=4,
          decoder_sparse_step=1, mlp_only_layers=[0], norm_topk_prob=False,
          **_COMMON)),
      # OLMoE: QK-norm over all heads, gates not renormalised.
      'olmoe': (t.OlmoeForCausalLM, t.OlmoeConfig(
          num_hidden_layers=2, intermediate_size=24, num_experts=4,
          norm_topk_prob=False, **_COMMON)),
      'qwen3_moe': (t.Qwen3MoeForCausalLM, t.Qwen3MoeConfig(**qwen3)),
      'qwen3_moe_window': (t.Qwen3MoeForCausalLM, t.Qwen3MoeConfig(
          use_sliding_window=True, sliding_window=_WINDOW, **qwen3)),
  }


NAMES = ('mixtral', 'mixtral_window', 'qwen2_moe', 'olmoe', 'qwen3_moe',
         'qwen3_moe_window')


def make(torch, t, name: str):
  """The tiny model `name` in eval mode, seeded; its RMSNorm weights
  (ones at init) drawn at random so that a misplaced one shows."""
  torch.manual_seed(0)
  cls, config = _configs(t)[name]
  model = cls(config).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for key, p in model.named_parameters():
      if key.endswith('norm.weight'):
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
  return model


def logits(torch, model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()
