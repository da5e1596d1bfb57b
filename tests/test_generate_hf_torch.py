"""Greedy generation equals transformers' own generate (do_sample=False) on
tiny random Mixtral and Qwen2-MoE models imported with hf_moe.load_model.

Ours decodes the prompts as one right-padded batch of different lengths;
transformers runs each prompt alone, so padding cannot hide a difference.
Needs the optional test extras (pip install -r requirements-hf.txt).
"""

import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch is an optional test extra (pip install -r '
    'requirements-hf.txt) used only to build the reference HF models')
transformers = pytest.importorskip(
    'transformers', reason='transformers is an optional test extra (pip '
    'install -r requirements-hf.txt)')

from moe_jax.convert import hf_moe  # pylint: disable=g-import-not-at-top
from moe_jax.generation import generate  # pylint: disable=g-import-not-at-top

_COMMON = dict(vocab_size=64, hidden_size=32, num_attention_heads=4,
               num_key_value_heads=2, num_experts_per_tok=2,
               initializer_range=0.1, rms_norm_eps=1e-5, rope_theta=5e5,
               max_position_embeddings=64, tie_word_embeddings=False)
NEW = 12


def _mixtral():
  return transformers.MixtralForCausalLM(transformers.MixtralConfig(
      num_hidden_layers=2, intermediate_size=24, num_local_experts=4,
      **_COMMON))


def _qwen2_moe():
  return transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
      num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=12,
      shared_expert_intermediate_size=24, num_experts=4,
      decoder_sparse_step=1, mlp_only_layers=[0], norm_topk_prob=False,
      **_COMMON))


def _hf_greedy(model, prompt, eos):
  """transformers' greedy continuation, stopping at `eos` (None: never).

  The EOS is set on the generation config, not suppressed with
  min_new_tokens: that masks the EOS logit, so the tokens would no longer
  be the argmax of the forward.
  """
  model.generation_config.eos_token_id = eos
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW,
                         do_sample=False, pad_token_id=0,
                         attention_mask=torch.ones(1, len(prompt), dtype=int))
  return out[0, len(prompt):].tolist()


@pytest.mark.parametrize('make', [_mixtral, _qwen2_moe])
def test_greedy_equals_transformers_generate(make, tmp_path):
  torch.manual_seed(0)
  hf = make().eval()
  hf.save_pretrained(tmp_path / 'hf')
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 64, n).tolist() for n in (3, 17, 9)]
  model = hf_moe.load_model(tmp_path / 'hf')
  ref = [_hf_greedy(hf, p, None) for p in prompts]
  ours = generate(model, prompts, max_new_tokens=NEW)
  assert [list(r) for r in ours.tokens] == ref
  # Not a degenerate test: the continuations differ and do not just repeat.
  assert len({tuple(r) for r in ref}) == 3
  assert all(len(set(r)) > 2 for r in ref)

  # Stopping at the config's EOS as transformers does: the stop token ends
  # the row and is kept.
  eos = hf.config.eos_token_id
  ref = [_hf_greedy(hf, p, eos) for p in prompts]
  ours = generate(model, prompts, max_new_tokens=NEW, stop_token=eos)
  assert [list(r[:n]) for r, n in zip(ours.tokens, ours.lengths)] == ref
