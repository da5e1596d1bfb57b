"""Hugging Face config.json <-> moe_jax's ModelConfig, for the MoE families we convert.

The families (Mixtral, Qwen2-MoE) differ in how they name their MoE parts
(`Family`); the weights that follow these configs are mapped in hf_moe.py,
whose docstring lists the conventions and what is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from moe_jax.core.config import MoEConfig
# HF's routing is softmax top-k: this converter depends on that router.
from moe_jax.core.routing import topk
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig


@dataclasses.dataclass(frozen=True)
class Family:
  """How one Hugging Face architecture names its MoE parts."""
  model_type: str
  architecture: str
  moe_prefix: str  # The MoE block inside a layer.
  expert_names: tuple[str, str, str]  # HF names of (wi_gate, wi, wo).
  num_experts_key: str
  expert_width_key: str
  shared_prefix: str = 'shared_expert.'  # The shared expert(s) in moe_prefix.


MIXTRAL = Family('mixtral', 'MixtralForCausalLM', 'block_sparse_moe.',
                 ('w1', 'w3', 'w2'), 'num_local_experts', 'intermediate_size')
QWEN2_MOE = Family('qwen2_moe', 'Qwen2MoeForCausalLM', 'mlp.',
                   ('gate_proj', 'up_proj', 'down_proj'), 'num_experts',
                   'moe_intermediate_size')
FAMILIES = {f.model_type: f for f in (MIXTRAL, QWEN2_MOE)}
# Converted by hf_deepseek.py (multi-head latent attention).
DEEPSEEK_TYPES = ('deepseek_v2', 'deepseek_v3')
FFN_NAMES = ('wi_gate', 'wi', 'wo')
DENSE_HF = ('gate_proj', 'up_proj', 'down_proj')


# ------------------------------------------------------------- configs --

def _rope_theta(hf: Mapping[str, Any]) -> float:
  """θ from transformers 5's rope_parameters or the older rope_theta."""
  params = hf.get('rope_parameters') or {}
  scaling = hf.get('rope_scaling') or {}
  kind = (params.get('rope_type') or scaling.get('rope_type') or
          scaling.get('type') or 'default')
  if kind != 'default':
    raise UserInputError(
        f'RoPE scaling {kind!r} is not modelled; only the default rotary '
        'embedding imports (drop rope_scaling from config.json for short '
        'contexts).')
  return float(params.get('rope_theta', hf.get('rope_theta', 10000.0)))


def hf_family(hf: Mapping[str, Any]) -> Family:
  kind = hf.get('model_type')
  if kind not in FAMILIES:
    raise UserInputError(
        f'config.json model_type={kind!r} is not supported; import one of '
        f'{sorted([*FAMILIES, *DEEPSEEK_TYPES])}.')
  return FAMILIES[kind]


def _first_dense_layers(hf: Mapping[str, Any]) -> int:
  dense = sorted(hf.get('mlp_only_layers') or [])
  if dense != list(range(len(dense))):
    raise UserInputError(
        f'mlp_only_layers={dense} is not a prefix [0, 1, ..., k-1]; only '
        'leading dense layers are modelled (model.first_dense_layers).')
  return len(dense)


def config_from_hf(hf: Mapping[str, Any], **moe_overrides) -> ModelConfig:
  """ModelConfig of a Hugging Face config.json (as a dict).

  moe_overrides: MoEConfig fields to change, e.g. dispatcher='index' and
  eval_capacity_factor=1.0 for the capacity counterfactual.
  """
  family = hf_family(hf)
  d, heads = hf['hidden_size'], hf['num_attention_heads']
  if hf.get('head_dim') not in (None, d // heads):
    raise UserInputError(
        f"head_dim={hf['head_dim']} differs from hidden_size / "
        f'num_attention_heads = {d // heads}; only D/H heads are modelled.')
  if hf.get('hidden_act', 'silu') != 'silu':
    raise UserInputError(f"hidden_act={hf['hidden_act']!r}: only SiLU "
                         '(SwiGLU experts) is supported.')
  qwen = family is QWEN2_MOE
  if qwen and hf.get('use_sliding_window'):
    raise UserInputError('use_sliding_window=true is not modelled; set it '
                         'to false in config.json.')
  width = hf[family.expert_width_key]
  shared = hf.get('shared_expert_intermediate_size', 0) if qwen else 0
  if shared % width:
    raise UserInputError(
        f'shared_expert_intermediate_size={shared} is not a multiple of '
        f'moe_intermediate_size={width}; shared experts are K_s experts of '
        'the routed width.')
  moe = dict(
      num_experts=hf[family.num_experts_key], top_k=hf['num_experts_per_tok'],
      router=topk.SPEC.name, expert_type='swiglu', d_ff=width,
      dispatcher='dropless', router_options=topk.Options(
          renormalize=bool(hf.get('norm_topk_prob', True)) if qwen else True),
      num_shared_experts=shared // width, shared_expert_gate=shared > 0,
      load_balance_weight=float(hf.get('router_aux_loss_coef', 0.0)),
      z_loss_weight=0.0)
  moe.update(moe_overrides)
  kv_heads = hf.get('num_key_value_heads') or heads
  return ModelConfig(
      vocab_size=hf['vocab_size'], d_model=d,
      num_layers=hf['num_hidden_layers'], num_heads=heads,
      num_kv_heads=None if kv_heads == heads else kv_heads,
      d_ff=hf['intermediate_size'],
      max_len=hf.get('max_position_embeddings', 4096), position='rope',
      moe_every=hf.get('decoder_sparse_step', 1) if qwen else 1,
      first_dense_layers=_first_dense_layers(hf) if qwen else 0,
      norm_eps=float(hf.get('rms_norm_eps', 1e-6)), rope_theta=_rope_theta(hf),
      tie_embeddings=bool(hf.get('tie_word_embeddings', False)),
      qkv_bias=bool(hf.get('qkv_bias', True)) if qwen else False,
      # Mixtral's window applies whenever it is set (Qwen2-MoE's only with
      # use_sliding_window, refused above).
      sliding_window=None if qwen else hf.get('sliding_window'),
      moe=MoEConfig(**moe))


def family_for(config: ModelConfig) -> Family:
  """The HF architecture that can hold `config`, or a one-line error."""
  c, m = config, config.moe
  problems = [
      (m.spec is not topk.SPEC, f'moe.router={m.router!r} (HF routes '
       f'softmax top-k: router={topk.SPEC.name!r})'),
      (m.expert_type != 'swiglu', f'moe.expert_type={m.expert_type!r} (HF '
       "experts are SwiGLU: 'swiglu')"),
      (c.position != 'rope', f'model.position={c.position!r} (HF uses rope)'),
      (c.moe_every == 0, 'model.moe_every=0 (a dense model is not an MoE '
       'checkpoint)'),
  ]
  if m.num_shared_experts:  # Qwen2-MoE: gated shared expert, q/k/v biases.
    family = QWEN2_MOE
    problems += [(not m.shared_expert_gate, 'moe.shared_expert_gate=False '
                  '(Qwen2-MoE gates its shared expert)'),
                 (not c.qkv_bias, 'model.qkv_bias=False (Qwen2-MoE has '
                  'q/k/v biases)'),
                 (c.sliding_window is not None, 'model.sliding_window (its '
                  "Qwen2-MoE form, use_sliding_window, is not modelled)")]
  else:
    family = MIXTRAL
    problems += [
        (c.moe_every != 1 or c.first_dense_layers,
         'dense layers (Mixtral is MoE in every layer)'),
        (m.spec is topk.SPEC and not m.router_options.renormalize,
         f'moe.router_options.{topk.SPEC.name}.renormalize=False (Mixtral '
         'renormalises)'),
        (c.qkv_bias, 'model.qkv_bias=True (Mixtral has no biases)')]
  found = [text for bad, text in problems if bad]
  if found:
    raise UserInputError(
        f'cannot export as {family.architecture}: {"; ".join(found)}.')
  return family


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """The config.json of `config` (Mixtral, or Qwen2-MoE with shared experts)."""
  c, m = config, config.moe
  family = family_for(c)
  hf = {
      'architectures': [family.architecture], 'model_type': family.model_type,
      'vocab_size': c.vocab_size, 'hidden_size': c.d_model,
      'num_hidden_layers': c.num_layers, 'num_attention_heads': c.num_heads,
      'num_key_value_heads': c.kv_heads, 'hidden_act': 'silu',
      'max_position_embeddings': c.max_len, 'rms_norm_eps': c.norm_eps,
      'rope_theta': c.rope_theta, 'tie_word_embeddings': c.tie_embeddings,
      family.num_experts_key: m.num_experts,
      'num_experts_per_tok': m.top_k,
      'router_aux_loss_coef': m.load_balance_weight,
      'torch_dtype': 'float32',
  }
  if family is MIXTRAL:
    hf.update(intermediate_size=m.d_ff, sliding_window=c.sliding_window)
  else:
    hf.update(intermediate_size=c.d_ff, moe_intermediate_size=m.d_ff,
              shared_expert_intermediate_size=m.num_shared_experts * m.d_ff,
              decoder_sparse_step=c.moe_every,
              mlp_only_layers=list(range(c.first_dense_layers)),
              norm_topk_prob=m.router_options.renormalize, qkv_bias=True,
              use_sliding_window=False)
  return hf
