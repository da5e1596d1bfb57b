"""Hugging Face Mixtral and Qwen2-MoE checkpoints <-> moe_jax, without PyTorch
(DeepSeek-V2/V3 too: hf_deepseek.py adds their attention and routing).

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
activations other than SiLU, non-prefix mlp_only_layers, Qwen2-MoE's use_sliding_window. Mixtral's
sliding_window is model.sliding_window: each position attends to the last W
positions, as transformers masks it.
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

from moe_jax.convert import hf_config, hf_deepseek
# The config half of the converter, re-exported: hf_moe is the public entry.
from moe_jax.convert.hf_config import (DENSE_HF, FAMILIES, FFN_NAMES, MIXTRAL,  # pylint: disable=unused-import
                                       QWEN2_MOE, Family, family_for,
                                       hf_family)
from moe_jax.convert.safetensors_dir import TensorReader, write_tensors
from moe_jax.errors import UserInputError
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM


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
    # MLA's projections (and V3's router bias) come from hf_deepseek.
    links += [_Link(*t) for t in hf_deepseek.layer_links(c, family, i)]
    for n in ('qkv' if c.mla is None else ''):
      links.append(_Link((p + f'self_attn.{n}_proj.weight',),
                         b + ('attn', 'w' + n), 'linear1'))
      if c.qkv_bias:
        links.append(_Link((p + f'self_attn.{n}_proj.bias',),
                           b + ('attn', 'b' + n), 'vector'))
    ffn = b + ('ffn',)
    if not c.is_moe_layer(i):
      links += [_Link((p + f'mlp.{h}.weight',), ffn + (ours,), 'linear1')
                for ours, h in zip(FFN_NAMES, DENSE_HF)]
      continue
    q = p + family.moe_prefix
    links.append(_Link((q + 'gate.weight',), ffn + ('router_kernel',),
                       'linear1'))
    links += [_Link(tuple(q + f'experts.{e}.{h}.weight'
                          for e in range(m.num_experts)), ffn + (ours,),
                    'experts')
              for ours, h in zip(FFN_NAMES, family.expert_names)]
    if m.num_shared_experts:
      links += [_Link((q + f'{family.shared_prefix}{h}.weight',),
                      ffn + ('shared_' + ours,), 'linear1')
                for ours, h in zip(FFN_NAMES, DENSE_HF)]
    if m.shared_expert_gate:
      links.append(_Link((q + 'shared_expert_gate.weight',),
                         ffn + ('shared_gate',), 'linear1'))
  return links


def config_from_hf(hf: Mapping[str, Any], **moe_overrides) -> ModelConfig:
  """ModelConfig of a config.json (as a dict) of any family converted here."""
  if hf.get('model_type') in hf_deepseek.FAMILIES:
    return hf_deepseek.config_from_hf(hf, **moe_overrides)
  return hf_config.config_from_hf(hf, **moe_overrides)


def config_to_hf(config: ModelConfig) -> dict[str, Any]:
  """The config.json of `config`: DeepSeek with MLA, else hf_config's."""
  if config.mla is not None:
    return hf_deepseek.config_to_hf(config)
  return hf_config.config_to_hf(config)


def _family(model_type: str) -> Family:
  return (hf_deepseek.FAMILIES.get(model_type) or
          hf_family({'model_type': model_type}))


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
  for link in _links(config, _family(hf['model_type'])):
    arrays = [reader.get(name).astype(dtype) for name in link.hf]
    _set(params, link.path, _ours(link, arrays, _get(shapes, link.path).shape))
  if config.mla is not None:  # DeepSeek's RoPE layout -> ours.
    params = hf_deepseek.params_from_hf(hf, config, params)
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
  if config.mla is not None:  # Our RoPE layout -> DeepSeek's.
    params = hf_deepseek.params_to_hf(config, params)
  tensors = {}
  for link in _links(config, _family(hf['model_type'])):
    array = np.asarray(_get(params, link.path)).astype(dtype)
    tensors.update(zip(link.hf, _theirs(link, array)))
  directory = pathlib.Path(directory)
  names = write_tensors(directory, tensors, max_shard_bytes)
  hf['torch_dtype'] = np.dtype(dtype).name
  (directory / 'config.json').write_text(json.dumps(hf, indent=2))
  return names
