"""Against `transformers` itself: tiny random Mixtral and Qwen2-MoE models,
imported and exported, give the same float32 logits as the PyTorch model.

PyTorch is used here only, to make and run the reference models; the
converter itself reads safetensors with numpy. Neither torch nor
transformers is in requirements.txt (the CPU wheel alone is ~200 MB, and
PyPI's default pulls CUDA libraries); install them to run this file:
  pip install torch transformers   (e.g. from PyTorch's CPU wheel index)
"""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch is an optional test extra (pip install torch '
    'transformers) used only to build the reference HF models')
transformers = pytest.importorskip(
    'transformers', reason='transformers is an optional test extra (pip '
    'install torch transformers)')

from moe_jax.convert import hf_moe  # pylint: disable=g-import-not-at-top

_COMMON = dict(vocab_size=64, hidden_size=32, num_attention_heads=4,
               num_key_value_heads=2, num_experts_per_tok=2,
               initializer_range=0.1, rms_norm_eps=1e-5, rope_theta=5e5,
               max_position_embeddings=64, tie_word_embeddings=False)


def _mixtral():
  return transformers.MixtralForCausalLM(transformers.MixtralConfig(
      num_hidden_layers=2, intermediate_size=24, num_local_experts=4,
      **_COMMON))


def _mixtral_window():
  # A sliding window shorter than the 24-token test sequences: it used to be
  # ignored on import, and the logits then differed from transformers'.
  return transformers.MixtralForCausalLM(transformers.MixtralConfig(
      num_hidden_layers=2, intermediate_size=24, num_local_experts=4,
      sliding_window=8, **_COMMON))


def _qwen2_moe():
  # A dense first layer, a gated shared expert 2x the routed width, and
  # gates that are not renormalised.
  return transformers.Qwen2MoeForCausalLM(transformers.Qwen2MoeConfig(
      num_hidden_layers=3, intermediate_size=40, moe_intermediate_size=12,
      shared_expert_intermediate_size=24, num_experts=4,
      decoder_sparse_step=1, mlp_only_layers=[0], norm_topk_prob=False,
      **_COMMON))


def _hf_logits(model, tokens):
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def _close(ours, ref):
  """Max error relative to the largest logit, as float32 allows."""
  err = np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()
  assert err < 1e-4, err


@pytest.mark.parametrize('make', [_mixtral, _mixtral_window, _qwen2_moe])
def test_import_and_export_match_transformers(make, tmp_path):
  torch.manual_seed(0)
  hf = make().eval()
  hf.save_pretrained(tmp_path / 'hf')
  tokens = np.random.default_rng(0).integers(0, 64, (2, 24))
  ref = _hf_logits(hf, tokens)

  model = hf_moe.load_model(tmp_path / 'hf')  # Dropless top-k, float32.
  logits, aux = model(jnp.asarray(tokens), return_routing=True)
  _close(logits, ref)
  # The test means something only if routing is not degenerate: every
  # expert gets tokens in the last layer.
  chosen = np.asarray(aux['routing'][max(aux['routing'])]['plan'].expert_index)
  assert len(np.unique(chosen)) == 4

  config, params = hf_moe.import_checkpoint(tmp_path / 'hf')
  hf_moe.export_checkpoint(config, params, tmp_path / 'back')
  back, info = type(hf).from_pretrained(tmp_path / 'back',
                                        output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys',
                                   'mismatched_keys')), info
  _close(_hf_logits(back.eval(), tokens), ref)
