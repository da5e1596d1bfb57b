"""Against `transformers` itself: tiny random DeepSeek-V2 and V3 models
(multi-head latent attention, a dense first layer, shared experts, grouped
routing, V3's selection bias) imported give transformers' float32 logits,
exported make transformers give ours, transformers 5's fused expert layout
imports to the same parameters, and greedy decoding with the compressed
cache gives transformers' own `generate`. (The family table's defaults are
checked against transformers in tests/test_convert_hf_torch.py.)

Needs the optional test extras (pip install -r requirements-hf.txt).
"""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moe_jax.convert import hf_moe
from moe_jax.convert.safetensors_dir import TensorReader
from moe_jax.generation import generate
from tests import _hf_models

torch, transformers = _hf_models.import_torch()
# transformers' greedy generate, as the Mixtral/Qwen test calls it.
from test_generate_hf_torch import NEW, _hf_greedy  # pylint: disable=g-import-not-at-top,wrong-import-position

V, E = 64, 8
_COMMON = dict(
    vocab_size=V, hidden_size=32, intermediate_size=48,
    moe_intermediate_size=12, num_hidden_layers=3, num_attention_heads=4,
    num_key_value_heads=4, n_shared_experts=1, n_routed_experts=E,
    num_experts_per_tok=2, n_group=4, topk_group=2, first_k_dense_replace=1,
    kv_lora_rank=16, qk_rope_head_dim=4, qk_nope_head_dim=8, v_head_dim=6,
    max_position_embeddings=64, initializer_range=0.2, rms_norm_eps=1e-5,
    tie_word_embeddings=False)
# V3 with a query latent and its sigmoid, biased, top-2-sum group routing,
# in both RoPE layouts; V2-Lite-like without a query latent, softmax
# group-limited routing and unnormalised gates.
CASES = {
    'v3': (transformers.DeepseekV3Config, dict(
        q_lora_rank=24, routed_scaling_factor=2.5)),
    'v3_rotate_half': (transformers.DeepseekV3Config, dict(
        q_lora_rank=24, routed_scaling_factor=2.5, rope_interleave=False)),
    'v2': (transformers.DeepseekV2Config, dict(
        q_lora_rank=None, routed_scaling_factor=2.0,
        topk_method='group_limited_greedy')),
}


def _make(name):
  config_cls, extra = CASES[name]
  torch.manual_seed(0)
  config = config_cls(**_COMMON, **extra)
  model = transformers.AutoModelForCausalLM.from_config(config).eval()
  # Norm weights start at 1 and the V3 bias at 0, which would hide a
  # mismatched norm or a dropped bias: make every one matter.
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if 'norm' in pname:
        p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    for module in model.modules():
      if hasattr(module, 'e_score_correction_bias'):
        module.e_score_correction_bias.copy_(
            0.1 * torch.randn(E, generator=gen))
  return model


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """name -> (HF model, its folder), each made once and saved in the
  original layout under hf/ and transformers 5's fused one under fused/."""
  made = {}

  def get(name):
    if name not in made:
      model, path = _make(name), tmp_path_factory.mktemp(name)
      model.save_pretrained(path / 'hf')
      model.save_pretrained(path / 'fused', save_original_format=False)
      made[name] = model, path
    return made[name]
  return get


# One compile per case: eager op-by-op dispatch is slower on a busy CPU.
_forward = nnx.jit(lambda model, tokens: model(tokens, return_routing=True))
TOKENS = np.random.default_rng(0).integers(0, V, (2, 24))


def _relative_error(ours, ref):
  return float(np.abs(np.asarray(ours) - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize('name', list(CASES))
def test_import_and_export_match_transformers(saved, name, tmp_path):
  hf, path = saved(name)
  ref = _hf_models.logits(torch, hf, TOKENS)
  logits, aux = _forward(hf_moe.load_model(path / 'hf'), jnp.asarray(TOKENS))
  imported = _relative_error(logits, ref)
  # Not degenerate: most experts get tokens in the last layer.
  chosen = np.asarray(aux['routing'][2]['plan'].expert_index)
  assert len(np.unique(chosen)) >= E - 2

  # transformers runs what we export (config.json and weights) and gives
  # our logits.
  config, params = hf_moe.import_checkpoint(path / 'hf')
  hf_moe.export_checkpoint(config, params, tmp_path / 'back')
  back, info = type(hf).from_pretrained(tmp_path / 'back',
                                        output_loading_info=True)
  assert not any(info[k] for k in ('missing_keys', 'unexpected_keys',
                                   'mismatched_keys')), info
  exported = _relative_error(_hf_models.logits(torch, back.eval(), TOKENS),
                             logits)
  print(f'{name}: max |logit difference| / max |logit|: HF -> ours '
        f'{imported:.1e}, ours -> HF {exported:.1e}')
  assert imported < 1e-4 and exported < 1e-4, (imported, exported)


@pytest.mark.parametrize('name', ['v3', 'v2'])
def test_fused_layout_imports_the_same_parameters(saved, name):
  _, path = saved(name)
  experts = lambda folder: {n.split('.')[-1] for n in
                            TensorReader(path / folder).names()
                            if '.experts.' in n}
  # Not two imports of one layout: transformers wrote each as documented.
  assert experts('hf') == {'weight'}
  assert experts('fused') == {'gate_up_proj', 'down_proj'}
  config, params = hf_moe.import_checkpoint(path / 'hf')
  fused_config, fused = hf_moe.import_checkpoint(path / 'fused')
  assert fused_config == config
  jax.tree.map(np.testing.assert_array_equal, fused, params)


def test_rope_layout_matters(saved, tmp_path):
  """The import's rotary reordering is needed: the same V3 weights read as
  rotate-half (rope_interleave=false) give other logits."""
  hf, path = saved('v3')
  shutil.copytree(path / 'hf', tmp_path / 'hf')
  config = json.loads((path / 'hf' / 'config.json').read_text())
  (tmp_path / 'hf' / 'config.json').write_text(
      json.dumps(dict(config, rope_interleave=False)))
  logits, _ = _forward(hf_moe.load_model(tmp_path / 'hf'), jnp.asarray(TOKENS))
  assert _relative_error(logits, _hf_models.logits(torch, hf, TOKENS)) > 1e-2


@pytest.mark.parametrize('name', ['v3', 'v2'])
def test_greedy_equals_transformers_generate(saved, name):
  hf, path = saved(name)
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, V, n).tolist() for n in (3, 17, 9)]
  ref = [_hf_greedy(hf, p, None) for p in prompts]
  ours = generate(hf_moe.load_model(path / 'hf'), prompts, max_new_tokens=NEW)
  assert [list(r) for r in ours.tokens] == ref
  # Not degenerate: the continuations differ and do not just repeat.
  assert len({tuple(r) for r in ref}) == 3
  assert all(len(set(r)) > 2 for r in ref)
