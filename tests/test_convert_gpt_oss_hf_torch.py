"""Against `transformers` itself: a tiny random gpt-oss (GptOssForCausalLM:
sinks, q/k/v/o biases, a router bias, fused interleaved experts with
biases, the clamped SwiGLU, windows in layers 0 and 2 and full attention in
layer 1) imports and exports with the same float32 logits, with the
default rotary embedding and with YaRN (truncate=False), and greedy
generation past the window equals transformers' generate. The family's
defaults are GptOssConfig's.

Needs the optional test extras (pip install -r requirements-hf.txt); the
converter itself reads safetensors with numpy. Tests without torch are in
tests/test_convert_gpt_oss.py.
"""

import dataclasses
import types

import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.convert import hf_families, hf_gpt_oss, hf_moe
from moe_jax.core.experts import mlp
from moe_jax.generation import generate
from tests import _hf_models

torch, transformers = _hf_models.import_torch()

VOCAB, WINDOW, NEW = 64, 8, 12
# 24 tokens: three windows' worth, so the windowed layers mask real keys.
TOKENS = np.random.default_rng(0).integers(0, VOCAB, (2, 24))


DEFAULT_ROPE = {'rope_type': 'default', 'rope_theta': 5e5}
# A small YaRN: 24 tokens run 3x past its pretraining context of 8, so the
# stretch and the attention factor both change the logits.
YARN = {'rope_type': 'yarn', 'rope_theta': 5e5, 'factor': 4.0,
        'original_max_position_embeddings': 8, 'beta_fast': 32.0,
        'beta_slow': 1.0, 'truncate': False}


def _model(rope=None):
  """The tiny model, seeded, with every bias, sink and norm drawn at random
  (transformers starts expert biases at 0 and norms at 1, where a misplaced
  one would not show) and gate_up_proj scaled so that the clamps bite."""
  torch.manual_seed(0)
  config = transformers.GptOssConfig(
      vocab_size=VOCAB, hidden_size=32, intermediate_size=24,
      num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
      head_dim=12, num_local_experts=4, num_experts_per_tok=2,
      sliding_window=WINDOW, max_position_embeddings=32,
      rope_parameters=rope or DEFAULT_ROPE,
      initializer_range=0.1, rms_norm_eps=1e-5, eos_token_id=2)
  model = transformers.GptOssForCausalLM(config).eval()
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for key, p in model.named_parameters():
      if key.endswith('norm.weight'):
        p.copy_(0.5 + torch.rand(p.shape, generator=gen))
      elif key.endswith(('bias', 'sinks')):
        p.copy_(0.3 * torch.randn(p.shape, generator=gen))
      elif key.endswith('gate_up_proj'):
        p.mul_(5.0)
  return model


def _clamped_share(model) -> float:
  """The share of gate/up pre-activations past the clamp, on TOKENS."""
  seen = []
  for layer in model.model.layers:
    experts = layer.mlp.experts
    def spy(gate_up, apply=experts._apply_gate):  # pylint: disable=protected-access
      seen.append((gate_up.abs() > mlp.CLAMP_LIMIT).float().mean().item())
      return apply(gate_up)
    experts._apply_gate = spy  # pylint: disable=protected-access
  _hf_models.logits(torch, model, TOKENS)
  for layer in model.model.layers:
    del layer.mlp.experts._apply_gate  # pylint: disable=protected-access
  return float(np.mean(seen))


def _close(ours, ref, what):
  err = np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()
  print(f'{what}: max |logit difference| / max |logit| = {err:.2e}')
  assert err < 1e-4, err


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  hf = _model()
  path = tmp_path_factory.mktemp('gpt_oss')
  hf.save_pretrained(path / 'hf')
  model = hf_moe.load_model(path / 'hf')
  ours, aux = model(jnp.asarray(TOKENS), return_routing=True)
  return types.SimpleNamespace(hf=hf, path=path, model=model,
                               ours=np.asarray(ours), aux=aux,
                               ref=_hf_models.logits(torch, hf, TOKENS))


def test_import_matches_transformers(saved):
  config = saved.model.config
  assert [config.layer_window(i) for i in range(3)] == [WINDOW, None, WINDOW]
  assert config.attention_sinks and config.moe.use_bias
  _close(saved.ours, saved.ref, 'gpt-oss HF -> ours')
  # Not a degenerate test: every expert gets tokens in the last layer, and
  # the clamps clip.
  chosen = saved.aux['routing'][2]['plan'].expert_index
  assert len(np.unique(np.asarray(chosen))) == 4
  assert _clamped_share(saved.hf) > 0.01


def _exported(saved):
  """transformers' model of our export of saved's checkpoint."""
  config, params = hf_moe.import_checkpoint(saved.path / 'hf')
  hf_moe.export_checkpoint(config, params, saved.path / 'back')
  back, info = transformers.GptOssForCausalLM.from_pretrained(
      saved.path / 'back', output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys',
                                   'mismatched_keys')), info
  assert back.config.layer_types == saved.hf.config.layer_types
  return back.eval()


def test_export_matches_transformers(saved):
  _close(_hf_models.logits(torch, _exported(saved), TOKENS), saved.ours,
         'gpt-oss ours -> HF')


def test_yarn_both_ways_matches_transformers(tmp_path):
  hf = _model(YARN)
  hf.save_pretrained(tmp_path / 'hf')
  model = hf_moe.load_model(tmp_path / 'hf')
  assert model.config.rope_scaling.truncate is False
  ref = _hf_models.logits(torch, hf, TOKENS)
  _close(model(jnp.asarray(TOKENS))[0], ref, 'gpt-oss YaRN HF -> ours')
  back = _exported(types.SimpleNamespace(hf=hf, path=tmp_path))
  # rope_to_hf also writes the legacy 'type' key, which transformers keeps.
  drop_type = lambda d: {k: v for k, v in d.items() if k != 'type'}
  assert (drop_type(back.config.rope_parameters) ==
          drop_type(hf.config.rope_parameters))
  _close(_hf_models.logits(torch, back, TOKENS), ref,
         'gpt-oss YaRN ours -> HF')
  # Not a degenerate test: YaRN moves the logits well past the tolerance.
  plain = _hf_models.logits(torch, _model(), TOKENS)
  assert np.abs(plain - ref).max() / np.abs(ref).max() > 1e-2


def _hf_greedy(model, prompt):
  with torch.no_grad():
    out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW,
                         do_sample=False, pad_token_id=0, eos_token_id=None,
                         attention_mask=torch.ones(1, len(prompt), dtype=int))
  return out[0, len(prompt):].tolist()


def test_greedy_equals_transformers_generate(saved):
  # Right-padded prompts of different lengths in one batch; 17 + 12 tokens
  # run well past the window of 8.
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, VOCAB, n).tolist() for n in (3, 17, 9)]
  ref = [_hf_greedy(saved.hf, p) for p in prompts]
  ours = generate(saved.model, prompts, max_new_tokens=NEW)
  assert [list(r) for r in ours.tokens] == ref
  assert len({tuple(r) for r in ref}) == 3
  assert all(len(set(r)) > 2 for r in ref)


def test_defaults_for_absent_keys_are_transformers_defaults():
  fields = {f.name: f.default for f in
            dataclasses.fields(transformers.GptOssConfig)}
  for key, ours in hf_families.GPT_OSS.defaults.items():
    theirs = (transformers.GptOssConfig.default_theta if key == 'rope_theta'
              else fields[key])
    assert ours == theirs, (key, ours, theirs)
  # An absent rope_parameters is YaRN to transformers, and to us.
  rope = transformers.GptOssConfig(num_hidden_layers=1).rope_parameters
  assert rope == {**hf_gpt_oss.YARN_DEFAULTS, 'rope_theta': 150000.0}
