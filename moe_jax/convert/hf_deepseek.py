"""Hugging Face DeepSeek-V2 / V3 (`deepseek_v2`, `deepseek_v3`) configs <->
moe_jax, and the RoPE layout of their weights.

What differs from the other families (hf_families.py holds both DeepSeeks'
names and transformers' defaults, hf_tensors.py their tensor map, hf_moe.py
reads and writes; tests/test_convert_deepseek_hf_torch.py checks the logits
against transformers 5.23 both ways):

- Attention is multi-head latent attention (model.mla, models/mla.py):
  q_proj or q_a_proj / q_a_layernorm / q_b_proj, kv_a_proj_with_mqa /
  kv_a_layernorm / kv_b_proj and o_proj are our wq or wq_a / q_norm / wq_b,
  wkv_a / kv_norm / wkv_b and wo.
- RoPE: DeepSeek rotates interleaved pairs (x_2i, x_2i+1) (V2 always; V3
  unless rope_interleave=false), ours the halves (x_i, x_i+Dr/2). The rotary
  rows of the q and k_r projections are reordered evens-then-odds on import
  (and back on export), which turns one rotation into the other and leaves
  every q·k as it was.
- Routing is the deepseek router (core/routing/deepseek.py), as
  transformers computes it: V3 sigmoid scores + e_score_correction_bias
  (our router_bias; imported with V3's bias update rate 1e-3, so further
  training moves it as V3's loss-free balancing did), groups scored by
  their top-2 sum, norm_topk_prob; V2 softmax, topk_method 'greedy' (no
  groups) or 'group_limited_greedy' (groups scored by their max), never
  renormalised. Both scale by routed_scaling_factor. Imports use the
  dropless dispatcher.
- n_shared_experts un-gated shared experts of moe_intermediate_size each,
  the first first_k_dense_replace layers dense (intermediate_size).

YaRN rope_scaling (the released checkpoints') is model.rope_scaling
(models/yarn.py), with DeepSeek's mscale_all_dim softmax temperature.

Refused with one line naming the field: other RoPE scalings,
num_key_value_heads other than
num_attention_heads, attention or MLP biases, activations other than SiLU,
moe_layer_freq other than 1, no shared expert, a scoring_func or topk_method
other than what transformers computes, V2's norm_topk_prob=true (transformers
ignores it, DeepSeek's own code honours it). Multi-token-prediction layers
(V3's num_nextn_predict_layers, stored as layers num_hidden_layers, ...) are
not read, as transformers' forward and generate do not use them either.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from moe_jax.convert.hf_families import (DEEPSEEK_V2, DEEPSEEK_V3, Family,
                                         Reader, hf_family, read_rope,
                                         refuse_export, rope_to_hf)
from moe_jax.core.config import MoEConfig
from moe_jax.core.routing import deepseek
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.mla import MLAConfig

# γ of V3's loss-free balancing (DeepSeek-V3, Liu et al. 2024, Sec. 2.1.2).
V3_BIAS_UPDATE_RATE = 1e-3
V2_TOPK_METHODS = ('greedy', 'group_limited_greedy')


def _refuse(bad: bool, text: str) -> None:
  if bad:
    raise UserInputError(f'config.json {text}.')


def _check_hf(get: Reader, v3: bool) -> None:
  """One line for the first field these models cannot honour. Keys that
  transformers' classes lack (moe_layer_freq, scoring_func, V3's
  topk_method: DeepSeek's own code reads them) must hold what transformers
  computes anyway."""
  hf, heads = get.hf, get('num_attention_heads')
  _refuse(get('num_key_value_heads') not in (None, heads),
          f"num_key_value_heads={get('num_key_value_heads')} differs from "
          f'num_attention_heads={heads}; MLA expands the latent to every head')
  _refuse(get('hidden_act') != 'silu',
          f"hidden_act={get('hidden_act')!r}: only SiLU (SwiGLU) is supported")
  for name in ('attention_bias', 'mlp_bias'):
    _refuse(name in get.family.defaults and bool(get(name)),
            f'{name}=true: biases are not modelled')
  _refuse(hf.get('moe_layer_freq', 1) != 1,
          f"moe_layer_freq={hf.get('moe_layer_freq')}: only 1 (MoE in every "
          'layer after first_k_dense_replace, as transformers builds it)')
  _refuse(not get('n_shared_experts'),
          f"n_shared_experts={get('n_shared_experts')!r}: DeepSeek layers "
          'have >= 1 shared expert')
  scoring = 'sigmoid' if v3 else 'softmax'
  _refuse(hf.get('scoring_func', scoring) != scoring,
          f"scoring_func={hf.get('scoring_func')!r}: transformers' "
          f'{hf["model_type"]} scores with {scoring}')
  if v3:
    method = hf.get('topk_method')
    _refuse(method not in (None, 'noaux_tc'),
            f"topk_method={method!r}: DeepSeek-V3 routes with 'noaux_tc'")
  else:
    _refuse(get('topk_method') not in V2_TOPK_METHODS,
            f"topk_method={get('topk_method')!r}: DeepSeek-V2 routes with one "
            f'of {V2_TOPK_METHODS}')
    _refuse(bool(get('norm_topk_prob')),
            "norm_topk_prob=true: transformers' DeepSeek-V2 ignores it and "
            "DeepSeek's code renormalises, so the model is ambiguous; set it "
            'to false')


def _router_options(get: Reader, v3: bool) -> deepseek.Options:
  n_group, topk_group = get('n_group') or 1, get('topk_group') or 1
  scaling = float(get('routed_scaling_factor'))
  if v3:
    return deepseek.Options(
        score='sigmoid', n_group=n_group, topk_group=topk_group,
        group_score='top2_sum', renormalize=bool(get('norm_topk_prob')),
        routed_scaling_factor=scaling, bias_update_rate=V3_BIAS_UPDATE_RATE)
  grouped = get('topk_method') == 'group_limited_greedy'
  return deepseek.Options(
      score='softmax', n_group=n_group if grouped else 1,
      topk_group=topk_group if grouped else 1, group_score='max',
      renormalize=False, routed_scaling_factor=scaling)


def config_from_hf(hf: Mapping[str, Any], family: Family,
                   **moe_overrides) -> ModelConfig:
  """ModelConfig of a deepseek_v2 / deepseek_v3 config.json (as a dict)."""
  get, v3 = Reader(hf, family), family is DEEPSEEK_V3
  _check_hf(get, v3)
  moe = dict(
      num_experts=get.num_experts(), top_k=get('num_experts_per_tok'),
      router=deepseek.SPEC.name, router_options=_router_options(get, v3),
      expert_type='swiglu', d_ff=get(family.expert_width_key),
      dispatcher='dropless', num_shared_experts=get('n_shared_experts'),
      load_balance_weight=float(hf.get('aux_loss_alpha') or 0.0),
      z_loss_weight=0.0)
  moe.update(moe_overrides)
  theta, rope_scaling = read_rope(hf, family.defaults['rope_theta'])
  mla = MLAConfig(**{name: get(name) for name in (
      'kv_lora_rank', 'qk_nope_head_dim', 'qk_rope_head_dim', 'v_head_dim',
      'q_lora_rank')})
  return ModelConfig(
      vocab_size=get('vocab_size'), d_model=get('hidden_size'),
      num_layers=get('num_hidden_layers'),
      num_heads=get('num_attention_heads'), d_ff=get('intermediate_size'),
      max_len=get('max_position_embeddings'), position='rope', moe_every=1,
      first_dense_layers=get('first_k_dense_replace'),
      norm_eps=float(get('rms_norm_eps')),
      rope_theta=theta, rope_scaling=rope_scaling,
      tie_embeddings=bool(get('tie_word_embeddings')), mla=mla,
      moe=MoEConfig(**moe))


def family_for(config: ModelConfig) -> Family:
  """The DeepSeek architecture that holds an MLA config, or one line."""
  c, m = config, config.moe
  o = m.router_options
  problems = [
      (m.spec is not deepseek.SPEC, f'moe.router={m.router!r} (DeepSeek '
       "routes with router='deepseek')"),
      (m.expert_type != 'swiglu', f'moe.expert_type={m.expert_type!r} '
       "(DeepSeek experts are 'swiglu')"),
      (c.moe_every != 1, f'model.moe_every={c.moe_every} (DeepSeek is MoE '
       'in every layer after model.first_dense_layers)'),
      (m.num_shared_experts < 1 or m.shared_expert_gate,
       'moe.num_shared_experts < 1 or moe.shared_expert_gate (DeepSeek has '
       '>= 1 un-gated shared expert)'),
      (m.num_null_experts > 0, 'moe.num_null_experts (not in DeepSeek)'),
      (m.use_bias, 'moe.use_bias (DeepSeek has no router or expert biases)')]
  if m.spec is deepseek.SPEC:
    if o.score == 'sigmoid':
      family = DEEPSEEK_V3
      problems.append((o.group_score != 'top2_sum', 'router_options.deepseek.'
                       "group_score (V3 scores groups by 'top2_sum')"))
    else:
      family = DEEPSEEK_V2
      problems += [
          (o.n_group > 1 and o.group_score != 'max', 'router_options.'
           "deepseek.group_score (V2 scores groups by 'max')"),
          (o.renormalize, 'router_options.deepseek.renormalize=True (V2 '
           'does not renormalise)'),
          (o.bias_update_rate > 0, 'router_options.deepseek.'
           'bias_update_rate > 0 (V2 has no selection bias)')]
  refuse_export('DeepSeek-V2/V3 (model.mla)', problems)
  return family


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """The config.json of an MLA model (V3 for sigmoid scores, else V2)."""
  c, m, a = config, config.moe, config.mla
  family = family_for(c)
  o = m.router_options
  hf = {
      'architectures': [family.architecture], 'model_type': family.model_type,
      'vocab_size': c.vocab_size, 'hidden_size': c.d_model,
      'intermediate_size': c.d_ff, 'moe_intermediate_size': m.d_ff,
      'num_hidden_layers': c.num_layers, 'num_attention_heads': c.num_heads,
      'num_key_value_heads': c.num_heads, 'n_shared_experts':
          m.num_shared_experts, 'n_routed_experts': m.num_experts,
      'num_experts_per_tok': m.top_k, 'moe_layer_freq': 1,
      'first_k_dense_replace': c.first_dense_layers,
      'routed_scaling_factor': o.routed_scaling_factor,
      'n_group': o.n_group, 'topk_group': o.topk_group,
      'norm_topk_prob': o.renormalize, 'kv_lora_rank': a.kv_lora_rank,
      'q_lora_rank': a.q_lora_rank, 'qk_nope_head_dim': a.qk_nope_head_dim,
      'qk_rope_head_dim': a.qk_rope_head_dim, 'v_head_dim': a.v_head_dim,
      'hidden_act': 'silu', 'max_position_embeddings': c.max_len,
      'rms_norm_eps': c.norm_eps, **rope_to_hf(c),
      'tie_word_embeddings': c.tie_embeddings, 'attention_bias': False,
      'aux_loss_alpha': m.load_balance_weight, 'torch_dtype': 'float32',
  }
  if family is DEEPSEEK_V3:
    hf.update(scoring_func='sigmoid', topk_method='noaux_tc',
              rope_interleave=True, num_nextn_predict_layers=0)
  else:
    hf.update(scoring_func='softmax', mlp_bias=False, topk_method=(
        'group_limited_greedy' if o.n_group > 1 else 'greedy'))
  return hf


# ---------------------------------------------------------- parameters --

def _rope_order(dr: int) -> np.ndarray:
  """ours[j] = DeepSeek's[order[j]]: the even rotary dims, then the odd."""
  return np.concatenate([np.arange(0, dr, 2), np.arange(1, dr, 2)])


def _reorder_rope(params: dict, config: ModelConfig, order: np.ndarray):
  """A copy of params with each layer's rotary q and k_r rows reordered."""
  a = config.mla
  out = dict(params, blocks=dict(params['blocks']))
  for i, block in params['blocks'].items():
    attn = dict(block['attn'])
    for name, start in (('wq', a.qk_nope_head_dim), ('wq_b', a.qk_nope_head_dim),
                        ('wkv_a', a.kv_lora_rank)):
      if name in attn:
        w = np.asarray(attn[name])
        attn[name] = np.concatenate([w[..., :start], w[..., start:][..., order]],
                                    axis=-1)
    out['blocks'][i] = dict(block, attn=attn)
  return out


def _interleaved(hf: Mapping[str, Any]) -> bool:
  family = hf_family(hf)
  return family is DEEPSEEK_V2 or bool(Reader(hf, family)('rope_interleave'))


def params_from_hf(hf: Mapping[str, Any], config: ModelConfig, params: dict
                   ) -> dict:
  """Imported params in our RoPE layout (module docstring)."""
  if not _interleaved(hf):
    return params
  return _reorder_rope(params, config, _rope_order(config.mla.qk_rope_head_dim))


def params_to_hf(config: ModelConfig, params: dict) -> dict:
  """params in DeepSeek's interleaved RoPE layout (config_to_hf writes
  rope_interleave=true for V3), with a zero V3 selection bias where the
  model has none (bias_update_rate 0: the same routing)."""
  params = _reorder_rope(params, config,
                         np.argsort(_rope_order(config.mla.qk_rope_head_dim)))
  if family_for(config).router_bias:
    for i, block in params['blocks'].items():
      if config.is_moe_layer(int(i)) and 'router_bias' not in block['ffn']:
        params['blocks'][i] = dict(block, ffn=dict(
            block['ffn'], router_bias=np.zeros(config.moe.num_experts,
                                               np.float32)))
  return params


def mtp_prefixes(hf: Mapping[str, Any]) -> tuple[str, ...]:
  """The name prefixes of V3's multi-token-prediction layers, which follow
  the num_hidden_layers decoder layers and which transformers skips on
  loading (as `model.layers.61.*` for V3's 61 layers); () for others."""
  if hf_family(hf) is not DEEPSEEK_V3:
    return ()
  first = hf['num_hidden_layers']
  # transformers' default num_mtp_layers (this key's alias) is 1.
  count = hf.get('num_nextn_predict_layers', 1)
  return tuple(f'model.layers.{i}.' for i in range(first, first + count))
