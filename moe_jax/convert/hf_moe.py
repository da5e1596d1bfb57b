"""Hugging Face Mixtral and Qwen2-MoE checkpoints <-> moe_jax, without PyTorch.

A Hugging Face model folder (`config.json` + `*.safetensors`) becomes a
ModelConfig and the TransformerLM's parameters, and back. The conventions
line up as follows (checked against `transformers` by
tests/test_convert_hf_torch.py):

- Linear layers: HF stores W [out, in] and computes x·Wᵀ; ours store
  [in, out] (attention: [D, H, Dh] and [H, Dh, D]), so every matrix is
  transposed, and q/k/v/o reshaped with heads outermost (HF's `view(..., H,
  Dh)`).
- Rotary positions: HF's rotate_half pairs (x_i, x_{i+Dh/2}), as
  moe_jax.models.attention.rotary does, so q and k need no permutation.
- SwiGLU experts: Mixtral's w1 (gate, through SiLU), w3 (up), w2 (down) and
  Qwen's gate_proj / up_proj / down_proj are our wi_gate / wi / wo
  (moe_jax/core/experts/mlp.py).
- Routing: softmax over all experts, top-k, then renormalised (Mixtral) or
  not (Qwen's norm_topk_prob=false): the top-k router (core/routing/topk.py,
  imported below) with its renormalize option.
  Imports use the dropless dispatcher, so no token is dropped, as in HF.
- Qwen2-MoE's shared expert (width shared_expert_intermediate_size = K_s·F)
  is our K_s shared experts, scaled by sigmoid(x·w_s) (shared_expert_gate);
  its q/k/v biases are qkv_bias; mlp_only_layers = [0..k-1] is
  first_dense_layers = k and decoder_sparse_step is moe_every.
- RMSNorm ε and RoPE θ come from the config.

Not supported (one-line error): RoPE scaling, another head_dim than D/H,
activations other than SiLU, non-prefix mlp_only_layers. Mixtral's
sliding_window is ignored: we attend over the full context, which is the
same for sequences no longer than the window.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax.convert.safetensors_dir import TensorReader, write_tensors
from moe_jax.core.config import MoEConfig
# HF's routing is softmax top-k: this converter depends on that router.
from moe_jax.core.routing import topk
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM


@dataclasses.dataclass(frozen=True)
class Family:
  """How one Hugging Face architecture names its MoE parts."""
  model_type: str
  architecture: str
  moe_prefix: str  # The MoE block inside a layer.
  expert_names: tuple[str, str, str]  # HF names of (wi_gate, wi, wo).
  num_experts_key: str
  expert_width_key: str


MIXTRAL = Family('mixtral', 'MixtralForCausalLM', 'block_sparse_moe.',
                 ('w1', 'w3', 'w2'), 'num_local_experts', 'intermediate_size')
QWEN2_MOE = Family('qwen2_moe', 'Qwen2MoeForCausalLM', 'mlp.',
                   ('gate_proj', 'up_proj', 'down_proj'), 'num_experts',
                   'moe_intermediate_size')
FAMILIES = {f.model_type: f for f in (MIXTRAL, QWEN2_MOE)}
_FFN_NAMES = ('wi_gate', 'wi', 'wo')
_DENSE_HF = ('gate_proj', 'up_proj', 'down_proj')


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


def _family(hf: Mapping[str, Any]) -> Family:
  kind = hf.get('model_type')
  if kind not in FAMILIES:
    raise UserInputError(
        f'config.json model_type={kind!r} is not supported; import one of '
        f'{sorted(FAMILIES)}.')
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
  family = _family(hf)
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
                  'q/k/v biases)')]
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
    hf.update(intermediate_size=m.d_ff, sliding_window=None)
  else:
    hf.update(intermediate_size=c.d_ff, moe_intermediate_size=m.d_ff,
              shared_expert_intermediate_size=m.num_shared_experts * m.d_ff,
              decoder_sparse_step=c.moe_every,
              mlp_only_layers=list(range(c.first_dense_layers)),
              norm_topk_prob=m.router_options.renormalize, qkv_bias=True,
              use_sliding_window=False)
  return hf


# ---------------------------------------------------------- parameters --

@dataclasses.dataclass(frozen=True)
class _Link:
  """One of our parameters and the HF tensor(s) it is made of.

  kind: 'same' (identical layout), 'vector' (HF 1-D, ours reshaped),
  'linear<n>' (HF W [out, in]; ours [in..., out...] with n input axes) or
  'experts' (one HF W [out, in] per expert, ours stacked [E, in, out]).
  """
  hf: tuple[str, ...]
  path: tuple
  kind: str


def _links(config: ModelConfig, family: Family) -> list[_Link]:
  c, m = config, config.moe
  links = [_Link(('model.embed_tokens.weight',), ('embed',), 'same'),
           _Link(('model.norm.weight',), ('final_norm', 'scale'), 'vector')]
  if not c.tie_embeddings:
    links.append(_Link(('lm_head.weight',), ('head',), 'linear1'))
  for i in range(c.num_layers):
    p, b = f'model.layers.{i}.', ('blocks', i)
    links += [_Link((p + 'input_layernorm.weight',), b + ('attn_norm', 'scale'),
                    'vector'),
              _Link((p + 'post_attention_layernorm.weight',),
                    b + ('ffn_norm', 'scale'), 'vector'),
              _Link((p + 'self_attn.o_proj.weight',), b + ('attn', 'wo'),
                    'linear2')]
    for n in 'qkv':
      links.append(_Link((p + f'self_attn.{n}_proj.weight',),
                         b + ('attn', 'w' + n), 'linear1'))
      if c.qkv_bias:
        links.append(_Link((p + f'self_attn.{n}_proj.bias',),
                           b + ('attn', 'b' + n), 'vector'))
    ffn = b + ('ffn',)
    if not c.is_moe_layer(i):
      links += [_Link((p + f'mlp.{h}.weight',), ffn + (ours,), 'linear1')
                for ours, h in zip(_FFN_NAMES, _DENSE_HF)]
      continue
    q = p + family.moe_prefix
    links.append(_Link((q + 'gate.weight',), ffn + ('router_kernel',),
                       'linear1'))
    links += [_Link(tuple(q + f'experts.{e}.{h}.weight'
                          for e in range(m.num_experts)), ffn + (ours,),
                    'experts')
              for ours, h in zip(_FFN_NAMES, family.expert_names)]
    if m.num_shared_experts:
      links += [_Link((q + f'shared_expert.{h}.weight',),
                      ffn + ('shared_' + ours,), 'linear1')
                for ours, h in zip(_FFN_NAMES, _DENSE_HF)]
    if m.shared_expert_gate:
      links.append(_Link((q + 'shared_expert_gate.weight',),
                         ffn + ('shared_gate',), 'linear1'))
  return links


def _ours(link: _Link, arrays: list[np.ndarray], shape) -> np.ndarray:
  if link.kind == 'experts':
    return np.stack([a.T for a in arrays])
  if link.kind.startswith('linear'):
    return arrays[0].T.reshape(shape)
  return arrays[0].reshape(shape)


def _theirs(link: _Link, array: np.ndarray) -> list[np.ndarray]:
  if link.kind == 'experts':
    return [w.T for w in array]
  if link.kind.startswith('linear'):
    n = int(link.kind[len('linear'):])
    return [array.reshape(math.prod(array.shape[:n]), -1).T]
  return [array.reshape(-1) if link.kind == 'vector' else array]


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree, path, value):
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _abstract(config: ModelConfig):
  return nnx.split(nnx.eval_shape(lambda: TransformerLM(config,
                                                        rngs=nnx.Rngs(0))))


def import_checkpoint(directory: str | pathlib.Path, dtype=np.float32,
                      **moe_overrides):
  """(ModelConfig, params as a nested dict of numpy arrays) of an HF folder."""
  directory = pathlib.Path(directory)
  if not (directory / 'config.json').is_file():
    raise UserInputError(f'{directory}/config.json is missing; pass a '
                         'Hugging Face model folder.')
  hf = json.loads((directory / 'config.json').read_text())
  config = config_from_hf(hf, **moe_overrides)
  reader = TensorReader(directory)
  _, state = _abstract(config)
  shapes = nnx.to_pure_dict(state)
  params = {}
  for link in _links(config, _family(hf)):
    arrays = [reader.get(name).astype(dtype) for name in link.hf]
    _set(params, link.path, _ours(link, arrays, _get(shapes, link.path).shape))
  return config, params


def load_model(directory: str | pathlib.Path, dtype=np.float32,
               compute_dtype: str = 'float32', **moe_overrides) -> TransformerLM:
  """A TransformerLM with an HF checkpoint's weights.

  Args:
    directory: the HF model folder.
    dtype: parameter dtype (np.float32, or ml_dtypes.bfloat16 to halve
      host memory for real-sized models).
    compute_dtype: ModelConfig.dtype, 'float32' or 'bfloat16'.
    **moe_overrides: MoEConfig fields, e.g. dispatcher='index',
      eval_capacity_factor=1.0 to evaluate the same weights with capacity.
  """
  config, params = import_checkpoint(directory, dtype, **moe_overrides)
  config = dataclasses.replace(config, dtype=compute_dtype)
  graphdef, state = _abstract(config)
  _to_device(params)
  nnx.replace_by_pure_dict(state, params)
  return nnx.merge(graphdef, state)


def _to_device(tree: dict) -> None:
  """numpy -> jax arrays in place, one leaf at a time, so each host copy is
  freed as its device copy is made (a model never sits in memory twice)."""
  for key, value in tree.items():
    if isinstance(value, dict):
      _to_device(value)
    else:
      tree[key] = jnp.asarray(value)


def export_checkpoint(config: ModelConfig, params, directory: str | pathlib.Path,
                      dtype=np.float32, max_shard_bytes: int = 5 * 2 ** 30
                      ) -> list[str]:
  """Writes config.json and *.safetensors that transformers loads.

  Args:
    config: the model's ModelConfig.
    params: its parameters: nnx.State, or a nested dict of arrays.
    directory: the output folder (created).
    dtype: the dtype of the written tensors.

  Returns:
    The safetensors file names written.
  """
  hf = config_to_hf(config)
  if isinstance(params, nnx.State):
    params = nnx.to_pure_dict(params)
  tensors = {}
  for link in _links(config, FAMILIES[hf['model_type']]):
    array = np.asarray(_get(params, link.path)).astype(dtype)
    tensors.update(zip(link.hf, _theirs(link, array)))
  directory = pathlib.Path(directory)
  names = write_tensors(directory, tensors, max_shard_bytes)
  hf['torch_dtype'] = np.dtype(dtype).name
  (directory / 'config.json').write_text(json.dumps(hf, indent=2))
  return names
