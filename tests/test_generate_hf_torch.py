"""Greedy generation equals transformers' own generate (do_sample=False) on
tiny random Mixtral, Qwen2-MoE, OLMoE and Qwen3-MoE models imported with
hf_moe.load_model (tests/_hf_models.py).

Ours decodes the prompts as one right-padded batch of different lengths;
transformers runs each prompt alone, so padding cannot hide a difference.
Needs the optional test extras (pip install -r requirements-hf.txt).
"""

import numpy as np
import pytest

from moe_jax.convert import hf_moe
from moe_jax.generation import generate
from tests import _hf_models

torch, transformers = _hf_models.import_torch()

NEW = 12


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


@pytest.mark.parametrize('name', ['mixtral', 'qwen2_moe', 'olmoe',
                                  'qwen3_moe'])
def test_greedy_equals_transformers_generate(name, tmp_path):
  hf = _hf_models.make(torch, transformers, name)
  hf.save_pretrained(tmp_path / 'hf')
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, _hf_models.VOCAB, n).tolist() for n in (3, 17, 9)]
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
