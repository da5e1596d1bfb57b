"""Hugging Face config.json <-> moe_jax's ModelConfig, for the MoE families
of hf_families.py (Mixtral, Qwen2-MoE, OLMoE, Qwen3-MoE here; DeepSeek-V2/V3,
whose attention is MLA, in hf_deepseek.py, and gpt-oss in hf_gpt_oss.py,
which the three public functions hand them to).

A config.json field that moe_jax cannot honour is refused in one line that
names it; hf_moe.py's docstring lists them with the weight conventions.
"""

from __future__ import annotations

from typing import Any, Mapping

from moe_jax.convert import hf_deepseek, hf_gpt_oss
from moe_jax.convert.hf_families import (Family, Reader, export_family,
                                         hf_family, read_rope, rope_to_hf,
                                         refuse_export)
from moe_jax.core.config import MoEConfig
# HF's routing is softmax top-k: this converter depends on that router.
from moe_jax.core.routing import topk
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig


# -------------------------------------------------------------- import --

def _first_dense_layers(mlp_only_layers) -> int:
  dense = sorted(mlp_only_layers or [])
  if dense != list(range(len(dense))):
    raise UserInputError(
        f'mlp_only_layers={dense} is not a prefix [0, 1, ..., k-1]; only '
        'leading dense layers are modelled (model.first_dense_layers).')
  return len(dense)


def _refuse(get: Reader, d: int, heads: int) -> None:
  """One line naming the first config.json field we cannot honour."""
  family = get.family
  head_dim = get('head_dim')
  refused = [
      (get('hidden_act') != 'silu', f"hidden_act={get('hidden_act')!r}: only "
       'SiLU (SwiGLU experts) is supported'),
      (not family.head_dim and head_dim not in (None, d // heads),
       f'head_dim={head_dim} differs from hidden_size / num_attention_heads '
       f'= {d // heads}, which {family.model_type} does not allow'),
      (family.window == 'refused' and get('use_sliding_window'),
       'use_sliding_window=true is not modelled (its windows are per '
       'layer); set it to false'),
      (family.bias_key == 'attention_bias' and get('attention_bias'),
       'attention_bias=true (a bias on o_proj too) is not modelled'),
      ('clip_qkv' in family.defaults and get('clip_qkv') is not None,
       f"clip_qkv={get.hf.get('clip_qkv')} (clamping q, k, v) is not "
       'modelled'),
  ]
  for bad, text in refused:
    if bad:
      raise UserInputError(f'config.json {text}.')


def _window(get: Reader) -> int | None:
  mode = get.family.window
  if mode == 'always' or (mode == 'flag' and get('use_sliding_window')):
    return get('sliding_window')
  return None


def config_from_hf(hf: Mapping[str, Any], **moe_overrides) -> ModelConfig:
  """ModelConfig of a Hugging Face config.json (as a dict).

  moe_overrides: MoEConfig fields to change, e.g. dispatcher='index' and
  eval_capacity_factor=1.0 for the capacity counterfactual.
  """
  quantized = hf.get('quantization_config')
  if quantized:
    method = (quantized.get('quant_method') if hasattr(quantized, 'get')
              else quantized)
    raise UserInputError(
        f'config.json has quantization_config (quant_method={method!r}): '
        'quantized weights (e.g. gpt-oss\'s MXFP4 experts) are not read; '
        'dequantize the checkpoint to bf16/f32 first.')
  family = hf_family(hf)
  if family.mla:
    return hf_deepseek.config_from_hf(hf, family, **moe_overrides)
  if family.gpt_oss:
    return hf_gpt_oss.config_from_hf(hf, family, **moe_overrides)
  get = Reader(hf, family)
  d, heads = get('hidden_size'), get('num_attention_heads')
  _refuse(get, d, heads)
  width = get(family.expert_width_key)
  shared = get('shared_expert_intermediate_size') if family.shared_expert else 0
  if shared % width:
    raise UserInputError(
        f'shared_expert_intermediate_size={shared} is not a multiple of '
        f'moe_intermediate_size={width}; shared experts are K_s experts of '
        'the routed width.')
  # A family without norm_topk_prob (Mixtral) always renormalises.
  renormalize = ('norm_topk_prob' not in family.defaults
                 or bool(get('norm_topk_prob')))
  moe = dict(
      num_experts=get.num_experts(), top_k=get('num_experts_per_tok'),
      router=topk.SPEC.name, expert_type='swiglu', d_ff=width,
      dispatcher='dropless',
      router_options=topk.Options(renormalize=renormalize),
      num_shared_experts=shared // width, shared_expert_gate=shared > 0,
      load_balance_weight=float(get('router_aux_loss_coef')),
      z_loss_weight=0.0)
  moe.update(moe_overrides)
  kv_heads = get('num_key_value_heads') or heads
  head_dim = get('head_dim')
  theta, rope_scaling = read_rope(hf, family.defaults['rope_theta'])
  return ModelConfig(
      vocab_size=get('vocab_size'), d_model=d,
      num_layers=get('num_hidden_layers'), num_heads=heads,
      num_kv_heads=None if kv_heads == heads else kv_heads,
      d_ff=get('intermediate_size'),
      max_len=get('max_position_embeddings'), position='rope',
      moe_every=get('decoder_sparse_step') if family.dense_layers else 1,
      first_dense_layers=(_first_dense_layers(get('mlp_only_layers'))
                          if family.dense_layers else 0),
      norm_eps=float(get('rms_norm_eps')),
      rope_theta=theta, rope_scaling=rope_scaling,
      tie_embeddings=bool(get('tie_word_embeddings')),
      qkv_bias=family.bias_key == 'qkv_bias' and bool(get('qkv_bias')),
      sliding_window=_window(get),
      head_dim=None if head_dim in (None, d // heads) else head_dim,
      qk_norm=family.qk_norm, moe=MoEConfig(**moe))


# -------------------------------------------------------------- export --

def family_for(config: ModelConfig) -> Family:
  """The HF architecture that can hold `config`, or a one-line error."""
  if config.moe.expert_type == 'swiglu_clamped':  # Only gpt-oss has it.
    return hf_gpt_oss.family_for(config)
  if config.mla is not None:
    return hf_deepseek.family_for(config)
  c, m = config, config.moe
  family = export_family(c)
  name = family.architecture
  problems = [
      (m.spec is not topk.SPEC, f'moe.router={m.router!r} (HF routes '
       f'softmax top-k: router={topk.SPEC.name!r})'),
      (m.expert_type != 'swiglu', f'moe.expert_type={m.expert_type!r} (HF '
       "experts are SwiGLU: 'swiglu')"),
      (c.position != 'rope', f'model.position={c.position!r} (HF uses rope)'),
      (c.moe_every == 0, 'model.moe_every=0 (a dense model is not an MoE '
       'checkpoint)'),
      (not family.shared_expert and m.num_shared_experts,
       f'moe.num_shared_experts={m.num_shared_experts} ({name} has none)'),
      (family.shared_expert and not m.shared_expert_gate,
       f'moe.shared_expert_gate=False ({name} gates its shared expert)'),
      (not family.dense_layers and (c.moe_every != 1 or c.first_dense_layers),
       f'dense layers ({name} is MoE in every layer)'),
      ('norm_topk_prob' not in family.defaults and m.spec is topk.SPEC and
       not m.router_options.renormalize,
       f'moe.router_options.{topk.SPEC.name}.renormalize=False ({name} '
       'renormalises)'),
      (c.qkv_bias and family.bias_key != 'qkv_bias',
       f'model.qkv_bias=True ({name} has no q/k/v-only biases)'),
      (c.sliding_window is not None and family.window in ('none', 'refused'),
       f'model.sliding_window ({name} has no window in every layer)'),
      (not family.head_dim and c.head_width != c.d_model // c.num_heads,
       f'model.head_dim={c.head_dim} ({name} heads are D/H wide)'),
      *gpt_oss_features(c, name),
  ]
  refuse_export(name, problems)
  return family


def gpt_oss_features(c: ModelConfig, name: str) -> list[tuple[bool, str]]:
  """(present, words) of the gpt-oss features only gpt-oss exports hold."""
  return [
      (c.attention_sinks, f'model.attention_sinks ({name} has no sinks)'),
      (c.attn_out_bias, f'model.attn_out_bias ({name} has no o_proj bias)'),
      (c.moe.use_bias, f'moe.use_bias ({name} has no router or expert '
       'biases)'),
      (c.full_attention_every > 0, 'model.full_attention_every (per-layer '
       f'windows; {name} has one pattern)')]


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """The config.json of `config`, in the family family_for picks."""
  if family_for(config).gpt_oss:
    return hf_gpt_oss.config_to_hf(config)
  if config.mla is not None:
    return hf_deepseek.config_to_hf(config)
  c, m = config, config.moe
  family = family_for(c)
  hf = {
      'architectures': [family.architecture], 'model_type': family.model_type,
      'vocab_size': c.vocab_size, 'hidden_size': c.d_model,
      'num_hidden_layers': c.num_layers, 'num_attention_heads': c.num_heads,
      'num_key_value_heads': c.kv_heads, 'hidden_act': 'silu',
      'max_position_embeddings': c.max_len, 'rms_norm_eps': c.norm_eps,
      **rope_to_hf(c), 'tie_word_embeddings': c.tie_embeddings,
      family.num_experts_key: m.num_experts,
      'num_experts_per_tok': m.top_k,
      'router_aux_loss_coef': m.load_balance_weight,
      family.expert_width_key: m.d_ff,
      'torch_dtype': 'float32',
  }
  if family.head_dim:
    hf['head_dim'] = c.head_width
  if 'norm_topk_prob' in family.defaults:
    hf['norm_topk_prob'] = m.router_options.renormalize
  if family.dense_layers:
    hf.update(intermediate_size=c.d_ff, decoder_sparse_step=c.moe_every,
              mlp_only_layers=list(range(c.first_dense_layers)))
  if family.shared_expert:
    hf['shared_expert_intermediate_size'] = m.num_shared_experts * m.d_ff
  if family.bias_key:
    hf[family.bias_key] = c.qkv_bias
  if family.window == 'always':
    hf['sliding_window'] = c.sliding_window
  elif family.window in ('flag', 'refused'):
    hf['use_sliding_window'] = c.sliding_window is not None
    hf['sliding_window'] = c.sliding_window
  return hf
