"""Hugging Face gpt-oss (`gpt_oss`, GptOssForCausalLM) configs <-> moe_jax,
and its expert tensors.

What differs from the other families (checked against transformers 5.23's
modeling_gpt_oss.py by tests/test_convert_gpt_oss_hf_torch.py, both ways):

- Attention has biases on q, k, v and o (attention_bias: our qkv_bias and
  attn_out_bias) and a learned sink logit per head (`self_attn.sinks` [H]:
  model.attention_sinks). layer_types alternates sliding-window and full
  layers: model.full_attention_every (2 for transformers' default, windows
  in even layers), sliding_window W.
- The router is a linear layer with a bias (`mlp.router.weight` [E, D],
  `.bias` [E]: our router_kernel and router_bias_logits), top-k over its
  logits, then a softmax over the k chosen: router='topk' with
  renormalize=True, which is the same function.
- The experts are stored fused, with biases: `mlp.experts.gate_up_proj`
  [E, D, 2F] (already [in, out]) with gate and up *interleaved*, the gate
  in the even columns and up in the odd (the forward's `[..., ::2]`,
  `[..., 1::2]`), `gate_up_proj_bias` [E, 2F] likewise, `down_proj`
  [E, F, D] and `down_proj_bias` [E, D]: our wi_gate / wi, bi_gate / bi,
  wo and bo (moe.use_bias). The activation is the clamped SwiGLU
  (expert_type='swiglu_clamped', α = 1.702, limit 7).

RoPE: YaRN (model.rope_scaling, truncate=False in the released
checkpoints) or the default rotary embedding, read and written as
rope_parameters; a config.json without rope_parameters is YaRN with
GptOssConfig's defaults (YARN_DEFAULTS), as transformers reads it.

Refused with one line naming the field: a RoPE scaling other than YaRN,
a swiglu_alpha or swiglu_limit other than the
modelled ones, and a layer_types list that is not "full every n-th layer,
windows elsewhere". MXFP4-quantized experts (`*_blocks`, `*_scales`, as
OpenAI released them; hf_moe.py refuses them for every family) must be
dequantized first.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from moe_jax.convert.hf_families import (GPT_OSS, Family, Reader,
                                         read_rope, refuse_export,
                                         rope_to_hf)
from moe_jax.core.config import MoEConfig
from moe_jax.core.experts import mlp
from moe_jax.core.routing import topk
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig

SLIDING, FULL = 'sliding_attention', 'full_attention'
# Our halves of a fused, interleaved tensor: column parity per parameter.
INTERLEAVED = {'even': 0, 'odd': 1}
# What transformers 5.23's GptOssConfig fills in for a config.json without
# rope_parameters (θ from its default_theta, 150000): the released YaRN.
YARN_DEFAULTS = {'rope_type': 'yarn', 'factor': 32.0, 'beta_fast': 32.0,
                 'beta_slow': 1.0, 'truncate': False,
                 'original_max_position_embeddings': 4096}


def _pattern(num_layers: int, every: int) -> list[str]:
  """layer_types of full attention every `every`-th layer (0: none)."""
  return [FULL if every and (i + 1) % every == 0 else SLIDING
          for i in range(num_layers)]


def _windows(get: Reader) -> tuple[int | None, int]:
  """(sliding_window, full_attention_every) of config.json's layer_types."""
  n = get('num_hidden_layers')
  types = get('layer_types') or _pattern(n, 2)  # transformers' default.
  if all(t == FULL for t in types):
    return None, 0
  every = next((k for k in [0, *range(2, n + 1)] if types == _pattern(n, k)),
               None)
  if every is None:
    raise UserInputError(
        f'config.json layer_types={types} is not full attention every n-th '
        'layer with sliding windows elsewhere, the only pattern modelled '
        '(model.full_attention_every).')
  if get('sliding_window') is None:
    raise UserInputError('config.json has sliding_attention layers but '
                         'sliding_window=null; set the window.')
  return get('sliding_window'), every


def _rope(hf: Mapping[str, Any], family: Family):
  """(θ, YaRN or None); an absent rope_parameters is YaRN_DEFAULTS, as in
  transformers, and a scaling other than YaRN is refused in one line."""
  if not (hf.get('rope_parameters') or hf.get('rope_scaling')):
    hf = {**hf, 'rope_parameters': YARN_DEFAULTS}
  return read_rope(hf, family.defaults['rope_theta'])


def _rope_to_hf(config: ModelConfig) -> dict[str, Any]:
  """rope_parameters always: without it transformers assumes YaRN."""
  hf = rope_to_hf(config)
  return {'rope_parameters': {
      'rope_theta': hf['rope_theta'],
      **hf.get('rope_scaling', {'rope_type': 'default'})}}


def config_from_hf(hf: Mapping[str, Any], family: Family,
                   **moe_overrides) -> ModelConfig:
  """ModelConfig of a gpt_oss config.json (as a dict)."""
  get = Reader(hf, family)
  for key, ours in (('swiglu_alpha', mlp.CLAMP_ALPHA),
                    ('swiglu_limit', mlp.CLAMP_LIMIT)):
    if float(get(key)) != ours:
      raise UserInputError(f'config.json {key}={get(key)} is not modelled; '
                           f'the clamped SwiGLU uses {ours}.')
  window, every = _windows(get)
  theta, rope_scaling = _rope(hf, family)
  moe = dict(
      num_experts=get.num_experts(), top_k=get('num_experts_per_tok'),
      router=topk.SPEC.name, router_options=topk.Options(renormalize=True),
      expert_type='swiglu_clamped', d_ff=get(family.expert_width_key),
      dispatcher='dropless', use_bias=True,
      load_balance_weight=float(get('router_aux_loss_coef')),
      z_loss_weight=0.0)
  moe.update(moe_overrides)
  d, heads = get('hidden_size'), get('num_attention_heads')
  head_dim = get('head_dim')
  kv_heads = get('num_key_value_heads') or heads
  bias = bool(get('attention_bias'))
  return ModelConfig(
      vocab_size=get('vocab_size'), d_model=d,
      num_layers=get('num_hidden_layers'), num_heads=heads,
      num_kv_heads=None if kv_heads == heads else kv_heads,
      d_ff=get(family.expert_width_key),
      max_len=get('max_position_embeddings'), position='rope', moe_every=1,
      norm_eps=float(get('rms_norm_eps')),
      rope_theta=theta, rope_scaling=rope_scaling,
      tie_embeddings=bool(get('tie_word_embeddings')), qkv_bias=bias,
      attn_out_bias=bias, attention_sinks=True, sliding_window=window,
      full_attention_every=every,
      head_dim=None if head_dim in (None, d // heads) else head_dim,
      moe=MoEConfig(**moe))


def family_for(config: ModelConfig) -> Family:
  """GPT_OSS if it can hold `config`, else one line naming what cannot."""
  c, m = config, config.moe
  problems = [
      (m.spec is not topk.SPEC or not m.router_options.renormalize,
       f'moe.router={m.router!r} (gpt-oss routes with router='
       f"'{topk.SPEC.name}', renormalize=True)"),
      (not m.use_bias, 'moe.use_bias=False (gpt-oss has router and expert '
       'biases)'),
      (not c.attention_sinks, 'model.attention_sinks=False (gpt-oss has '
       'sinks)'),
      (c.qkv_bias != c.attn_out_bias, 'model.qkv_bias != model.attn_out_bias '
       '(gpt-oss has one attention_bias for q, k, v and o)'),
      (c.position != 'rope', f'model.position={c.position!r} (rope)'),
      (c.moe_every != 1 or c.first_dense_layers, 'dense layers (gpt-oss is '
       'MoE in every layer)'),
      (m.num_shared_experts or m.num_null_experts, 'shared or null experts '
       '(gpt-oss has neither)'),
      (c.qk_norm is not None, f'model.qk_norm={c.qk_norm!r} (gpt-oss has '
       'none)')]
  refuse_export(GPT_OSS.architecture, problems)
  return GPT_OSS


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """The config.json of a model family_for accepts."""
  c, m = config, config.moe
  family = family_for(c)
  every = c.full_attention_every if c.sliding_window else 1
  return {
      'architectures': [family.architecture], 'model_type': family.model_type,
      'vocab_size': c.vocab_size, 'hidden_size': c.d_model,
      'intermediate_size': m.d_ff, 'num_hidden_layers': c.num_layers,
      'num_attention_heads': c.num_heads, 'num_key_value_heads': c.kv_heads,
      'head_dim': c.head_width, family.num_experts_key: m.num_experts,
      'num_experts_per_tok': m.top_k,
      # transformers builds a window mask even when no layer reads it.
      'sliding_window': c.sliding_window or c.max_len,
      'layer_types': _pattern(c.num_layers, every),
      'max_position_embeddings': c.max_len, 'rms_norm_eps': c.norm_eps,
      **_rope_to_hf(c),
      'tie_word_embeddings': c.tie_embeddings, 'attention_bias': c.qkv_bias,
      'router_aux_loss_coef': m.load_balance_weight,
      'swiglu_alpha': mlp.CLAMP_ALPHA, 'swiglu_limit': mlp.CLAMP_LIMIT,
      'hidden_act': 'silu', 'torch_dtype': 'float32',
  }


# ------------------------------------------------------------- tensors --

def interleaved_half(array: np.ndarray, kind: str) -> np.ndarray:
  """Our half (gate: 'even', up: 'odd') of a fused gate_up tensor [..., 2F]."""
  return array[..., INTERLEAVED[kind]::2]


def put_interleaved(tensors: dict, name: str, half: np.ndarray,
                    kind: str) -> None:
  """Writes our half into tensors[name] [..., 2F], made on first use."""
  if name not in tensors:
    tensors[name] = np.empty(half.shape[:-1] + (2 * half.shape[-1],),
                             half.dtype)
  tensors[name][..., INTERLEAVED[kind]::2] = half
