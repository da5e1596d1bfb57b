"""Against `transformers` itself: tiny random Mixtral, Qwen2-MoE, OLMoE and
Qwen3-MoE models (and Mixtral and Qwen3-MoE with a sliding window),
imported and exported, give the same float32 logits as the PyTorch model,
and transformers 5's fused expert layout imports to the same parameters;
every family's defaults (DeepSeek's too) are transformers'. DeepSeek's
models are in tests/test_convert_deepseek_hf_torch.py.

PyTorch is used here only, to make and run the reference models; the
converter itself reads safetensors with numpy. Neither torch nor
transformers is in requirements.txt; CI installs requirements-hf.txt, and
without it this file skips.
"""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_jax.convert import hf_families, hf_moe
from moe_jax.convert.safetensors_dir import TensorReader
from tests import _hf_models

torch, transformers = _hf_models.import_torch()

TOKENS = np.random.default_rng(0).integers(0, _hf_models.VOCAB, (2, 24))


def _close(ours, ref, what):
  """Max error relative to the largest logit, as float32 allows."""
  err = np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max()
  print(f'{what}: max |logit difference| / max |logit| = {err:.2e}')
  assert err < 1e-4, err


@pytest.fixture(scope='module', params=_hf_models.NAMES)
def saved(request, tmp_path_factory):
  """The HF model saved in the original layout under hf/ and transformers
  5's fused one under fused/, its logits, and ours from hf/."""
  name = request.param
  hf = _hf_models.make(torch, transformers, name)
  path = tmp_path_factory.mktemp(name)
  hf.save_pretrained(path / 'hf')
  hf.save_pretrained(path / 'fused', save_original_format=False)
  model = hf_moe.load_model(path / 'hf')  # Dropless top-k, float32.
  ours, aux = model(jnp.asarray(TOKENS), return_routing=True)
  return types.SimpleNamespace(
      name=name, hf=hf, path=path, ours=np.asarray(ours), aux=aux,
      ref=_hf_models.logits(torch, hf, TOKENS))


def test_import_matches_transformers(saved):
  _close(saved.ours, saved.ref, f'{saved.name} HF -> ours')
  # The test means something only if routing is not degenerate: every
  # expert gets tokens in the last layer.
  routing = saved.aux['routing']
  chosen = np.asarray(routing[max(routing)]['plan'].expert_index)
  assert len(np.unique(chosen)) == 4


def test_fused_layout_imports_the_same_parameters(saved):
  path = saved.path
  names = lambda folder: TensorReader(path / folder).names()
  # Not two imports of one layout: transformers wrote each as documented.
  assert not any('gate_up_proj' in n for n in names('hf'))
  assert {n.split('.')[-1] for n in names('fused') if '.experts.' in n} == {
      'gate_up_proj', 'down_proj'}
  config, params = hf_moe.import_checkpoint(path / 'hf')
  fused_config, fused = hf_moe.import_checkpoint(path / 'fused')
  assert fused_config == config
  jax.tree.map(np.testing.assert_array_equal, fused, params)


def test_export_matches_transformers(saved):
  # transformers runs what we export (config.json and weights) and gives
  # our logits.
  config, params = hf_moe.import_checkpoint(saved.path / 'hf')
  hf_moe.export_checkpoint(config, params, saved.path / 'back')
  back, info = type(saved.hf).from_pretrained(saved.path / 'back',
                                              output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys',
                                   'mismatched_keys')), info
  _close(_hf_models.logits(torch, back.eval(), TOKENS), saved.ours,
         f'{saved.name} ours -> HF')


@pytest.mark.parametrize('family,cls', [
    (hf_families.MIXTRAL, 'MixtralConfig'),
    (hf_families.QWEN2_MOE, 'Qwen2MoeConfig'),
    (hf_families.OLMOE, 'OlmoeConfig'),
    (hf_families.QWEN3_MOE, 'Qwen3MoeConfig'),
    (hf_families.DEEPSEEK_V2, 'DeepseekV2Config'),
    (hf_families.DEEPSEEK_V3, 'DeepseekV3Config')])
def test_defaults_for_absent_keys_are_transformers_defaults(family, cls):
  # A config.json may leave a key out; transformers then reads its class's
  # default, and so must we.
  cls = getattr(transformers, cls)
  fields = {f.name: f.default for f in dataclasses.fields(cls)}
  for key, ours in family.defaults.items():
    theirs = (cls().rope_parameters['rope_theta'] if key == 'rope_theta'
              else fields.get(key))  # Not a field: read with getattr(None).
    assert ours == theirs, (key, ours, theirs)
