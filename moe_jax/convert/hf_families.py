"""The Hugging Face MoE families we convert, and what sets them apart.

Each Family says how its config.json and tensors name the MoE parts, which
of moe_jax's features it has (QK-norm, a shared expert, dense layers, a
sliding window, multi-head latent attention) and transformers' defaults for
the keys a config.json may leave out (HF reads a missing key as its config
class's default, so we do too, through Reader; tests/test_convert_hf_torch.py
and tests/test_convert_deepseek_hf_torch.py check the table against
transformers). hf_config.py (hf_deepseek.py for the MLA families) maps
configs with it, hf_tensors.py weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from moe_jax.errors import UserInputError
from moe_jax.models.yarn import YarnConfig


@dataclasses.dataclass(frozen=True)
class Family:
  """How one Hugging Face architecture names and shapes its parts.

  Attributes:
    model_type, architecture: config.json's model_type and architectures.
    moe_prefix: the MoE block inside a layer, in the per-expert layout.
    expert_names: HF names of our (wi_gate, wi, wo) in each expert.
    num_experts_key: the key exports write (imports read either spelling).
    expert_width_key: the routed experts' width F.
    defaults: transformers' class defaults of the keys read with a default.
    qk_norm: the model.qk_norm the family uses (None: no QK-norm).
    shared_expert: a sigmoid-gated shared expert (Qwen2-MoE).
    dense_layers: decoder_sparse_step and mlp_only_layers place dense
      layers, whose width is intermediate_size.
    window: how config.json's sliding_window reaches the model: 'always'
      (Mixtral: whenever set), 'flag' (only with use_sliding_window, in
      every layer), 'refused' (use_sliding_window is per-layer: refused) or
      'none' (the family has no window).
    bias_key: 'qkv_bias' (q/k/v biases, our model.qkv_bias), 'attention_bias'
      (q/k/v and o biases: refused when true) or None.
    head_dim: whether config.json's head_dim may differ from D/H.
    shared_prefix: the shared expert(s) inside moe_prefix.
    mla: multi-head latent attention (DeepSeek; hf_deepseek.py converts
      the config, and none of the fields above from qk_norm on applies).
    router_bias: the router's selection bias, `gate.e_score_correction_bias`
      (DeepSeek-V3), is our router_bias.
    router_name: the router's module inside moe_prefix.
    gpt_oss: gpt-oss's layout (hf_gpt_oss.py converts the config, and none
      of the fields above from qk_norm on applies; its experts are fused
      and interleaved, with biases).
  """
  model_type: str
  architecture: str
  moe_prefix: str
  expert_names: tuple[str, str, str]
  num_experts_key: str
  expert_width_key: str
  defaults: Mapping[str, Any]
  qk_norm: str | None = None
  shared_expert: bool = False
  dense_layers: bool = False
  window: str = 'none'
  bias_key: str | None = None
  head_dim: bool = False
  shared_prefix: str = 'shared_expert.'
  mla: bool = False
  router_bias: bool = False
  router_name: str = 'gate'
  gpt_oss: bool = False


_SWIGLU = ('gate_proj', 'up_proj', 'down_proj')
_COMMON = dict(hidden_act='silu', tie_word_embeddings=False, head_dim=None)
_QWEN = dict(_COMMON, rope_theta=1e4, rms_norm_eps=1e-6,
             max_position_embeddings=32768, router_aux_loss_coef=0.001,
             norm_topk_prob=False, use_sliding_window=False,
             decoder_sparse_step=1, mlp_only_layers=None)

MIXTRAL = Family(
    'mixtral', 'MixtralForCausalLM', 'block_sparse_moe.', ('w1', 'w3', 'w2'),
    'num_local_experts', 'intermediate_size', dict(
        _COMMON, rope_theta=1e6, rms_norm_eps=1e-5, num_key_value_heads=8,
        max_position_embeddings=4096 * 32, router_aux_loss_coef=0.001,
        sliding_window=None),
    window='always', head_dim=True)
QWEN2_MOE = Family(
    'qwen2_moe', 'Qwen2MoeForCausalLM', 'mlp.', _SWIGLU, 'num_experts',
    'moe_intermediate_size', dict(
        _QWEN, num_key_value_heads=16, qkv_bias=True,
        shared_expert_intermediate_size=5632),
    shared_expert=True, dense_layers=True, window='refused',
    bias_key='qkv_bias')
OLMOE = Family(
    'olmoe', 'OlmoeForCausalLM', 'mlp.', _SWIGLU, 'num_experts',
    'intermediate_size', dict(
        _COMMON, rope_theta=1e4, rms_norm_eps=1e-5, num_key_value_heads=None,
        max_position_embeddings=4096, router_aux_loss_coef=0.01,
        norm_topk_prob=False, attention_bias=False, clip_qkv=None),
    qk_norm='all_heads', bias_key='attention_bias')
QWEN3_MOE = Family(
    'qwen3_moe', 'Qwen3MoeForCausalLM', 'mlp.', _SWIGLU, 'num_experts',
    'moe_intermediate_size', dict(
        _QWEN, num_key_value_heads=4, attention_bias=False,
        sliding_window=4096),
    qk_norm='per_head', dense_layers=True, window='flag',
    bias_key='attention_bias', head_dim=True)

# No head_dim: transformers sets it to Dr whatever config.json says.
_DEEPSEEK = dict(hidden_act='silu', tie_word_embeddings=False, rope_theta=1e4,
                 rms_norm_eps=1e-6, attention_bias=False, q_lora_rank=1536)
DEEPSEEK_V2 = Family(
    'deepseek_v2', 'DeepseekV2ForCausalLM', 'mlp.', _SWIGLU,
    'n_routed_experts', 'moe_intermediate_size', dict(
        _DEEPSEEK, max_position_embeddings=2048, num_key_value_heads=None,
        mlp_bias=False, first_k_dense_replace=0, n_shared_experts=2,
        n_group=None, topk_group=None, topk_method='greedy',
        norm_topk_prob=False, routed_scaling_factor=1.0),
    shared_prefix='shared_experts.', mla=True)
DEEPSEEK_V3 = Family(
    'deepseek_v3', 'DeepseekV3ForCausalLM', 'mlp.', _SWIGLU,
    'n_routed_experts', 'moe_intermediate_size', dict(
        _DEEPSEEK, max_position_embeddings=4096, num_key_value_heads=128,
        first_k_dense_replace=3, n_shared_experts=1, n_group=8, topk_group=4,
        norm_topk_prob=True, routed_scaling_factor=2.5, rope_interleave=True),
    shared_prefix='shared_experts.', mla=True, router_bias=True)

# The rest are GptOssConfig's defaults (rope_theta: its default_theta; the
# absent rope_parameters, which it reads as YaRN, hf_gpt_oss.py refuses).
GPT_OSS = Family(
    'gpt_oss', 'GptOssForCausalLM', 'mlp.',
    ('gate_up_proj', 'gate_up_proj', 'down_proj'), 'num_local_experts',
    'intermediate_size', dict(
        hidden_act='silu', tie_word_embeddings=False, rope_theta=150000.0,
        rms_norm_eps=1e-5, max_position_embeddings=131072,
        num_key_value_heads=8, head_dim=64, sliding_window=128,
        layer_types=None, attention_bias=True, router_aux_loss_coef=0.001,
        swiglu_alpha=1.702, swiglu_limit=7.0),
    router_name='router', gpt_oss=True)

FAMILIES = {f.model_type: f for f in (MIXTRAL, QWEN2_MOE, OLMOE, QWEN3_MOE,
                                      DEEPSEEK_V2, DEEPSEEK_V3, GPT_OSS)}
# The two spellings of E: transformers maps each to the other per family.
NUM_EXPERTS_KEYS = ('num_experts', 'num_local_experts')


def hf_family(hf: Mapping[str, Any]) -> Family:
  """The Family of a config.json (as a dict), or a one-line error."""
  kind = hf.get('model_type')
  if kind not in FAMILIES:
    raise UserInputError(
        f'config.json model_type={kind!r} is not supported; import one of '
        f'{sorted(FAMILIES)}.')
  return FAMILIES[kind]


def refuse_export(name: str, problems) -> None:
  """One line naming every (bad, words) problem of exporting as `name`."""
  found = [text for bad, text in problems if bad]
  if found:
    raise UserInputError(f'cannot export as {name}: {"; ".join(found)}.')


def export_family(config) -> Family:
  """The family a ModelConfig without MLA exports as: its QK-norm names
  OLMoE or Qwen3-MoE; otherwise shared experts make it Qwen2-MoE, else
  Mixtral. (hf_config.family_for then checks that the family can hold it;
  hf_deepseek.family_for picks between the MLA families.)"""
  by_norm = {f.qk_norm: f for f in (OLMOE, QWEN3_MOE)}
  if config.qk_norm is not None:
    return by_norm[config.qk_norm]
  return QWEN2_MOE if config.moe.num_shared_experts else MIXTRAL


class Reader:
  """config.json's values, or the family's default where a key is absent
  (as transformers reads them); sizes without a default must be there."""

  def __init__(self, hf: Mapping[str, Any], family: Family):
    self.hf, self.family = hf, family

  def __call__(self, key: str):
    if key in self.hf:
      return self.hf[key]
    if key in self.family.defaults:
      return self.family.defaults[key]
    raise UserInputError(f'config.json has no {key!r}, which '
                         f'{self.family.model_type} needs.')

  def num_experts(self) -> int:
    keys = tuple(dict.fromkeys((self.family.num_experts_key,
                                *NUM_EXPERTS_KEYS)))
    for key in keys:
      if self.hf.get(key) is not None:
        return self.hf[key]
    raise UserInputError(f'config.json has none of {keys}; an MoE config '
                         'names its expert count.')


# config.json's YaRN keys (transformers 5.23's `_validate_yarn_rope_parameters`
# plus the type keys); anything else in a yarn rope_scaling is refused.
_YARN_KEYS = ('type', 'rope_type', 'rope_theta', 'factor',
              'original_max_position_embeddings', 'beta_fast', 'beta_slow',
              'mscale', 'mscale_all_dim', 'attention_factor', 'truncate')


def read_rope(hf: Mapping[str, Any], default_theta: float
              ) -> tuple[float, YarnConfig | None]:
  """(θ, YaRN or None) from transformers 5's rope_parameters or the older
  rope_theta and rope_scaling; other scalings are refused in one line.

  Absent YaRN keys are read as transformers reads them: factor as
  max_position_embeddings / original_max_position_embeddings, the original
  length as a top-level original_max_position_embeddings or else
  max_position_embeddings, beta_fast 32, beta_slow 1, no mscales.
  """
  spec = dict(hf.get('rope_scaling') or {})
  spec.update(hf.get('rope_parameters') or {})
  theta = float(spec.get('rope_theta', hf.get('rope_theta', default_theta)))
  kind = spec.get('rope_type') or spec.get('type') or 'default'
  if kind == 'default':
    return theta, None
  if kind != 'yarn':
    raise UserInputError(
        f'config.json rope_scaling type {kind!r} is not modelled; only the '
        "default rotary embedding and 'yarn' import (drop rope_scaling for "
        'short contexts).')
  unknown = sorted(set(spec) - set(_YARN_KEYS))
  if unknown:
    raise UserInputError(
        f'config.json rope_scaling key {unknown[0]!r} is not part of YaRN; '
        f'its keys: {", ".join(_YARN_KEYS)}.')
  original = (hf.get('original_max_position_embeddings') or
              spec.get('original_max_position_embeddings') or
              hf.get('max_position_embeddings'))
  factor = spec.get('factor')
  if factor is None and original:
    factor = hf.get('max_position_embeddings', original) / original
  return theta, YarnConfig(
      factor=factor, original_max_len=original,
      beta_fast=spec.get('beta_fast') or 32.0,
      beta_slow=spec.get('beta_slow') or 1.0,
      mscale=spec.get('mscale') or 0.0,
      mscale_all_dim=spec.get('mscale_all_dim') or 0.0,
      attention_factor=spec.get('attention_factor'),
      truncate=spec.get('truncate', True))


def read_rope_theta(hf: Mapping[str, Any], default: float) -> float:
  """θ alone, for a family that does not model YaRN (refused in one line)."""
  theta, scaling = read_rope(hf, default)
  if scaling is not None:
    raise UserInputError(
        "RoPE scaling 'yarn' is not modelled for this family; drop "
        'rope_scaling from config.json for short contexts.')
  return theta


def rope_to_hf(config) -> dict[str, Any]:
  """config.json's rope_theta, and rope_scaling (as the released DeepSeek
  and Qwen3 configs write it) when the model has YaRN."""
  out = {'rope_theta': config.rope_theta}
  y = config.rope_scaling
  if y is not None:
    out['rope_scaling'] = {
        'type': 'yarn', 'rope_type': 'yarn', 'factor': y.factor,
        'original_max_position_embeddings': y.original_max_len,
        'beta_fast': y.beta_fast, 'beta_slow': y.beta_slow,
        'truncate': y.truncate,
        # 0 is our "not given"; transformers reads absent keys the same way.
        **{k: getattr(y, k) for k in ('mscale', 'mscale_all_dim')
           if getattr(y, k)},
        **({} if y.attention_factor is None else
           {'attention_factor': y.attention_factor})}
  return out
