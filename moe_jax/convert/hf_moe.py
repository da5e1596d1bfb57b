"""Hugging Face Mixtral, Qwen2-MoE, OLMoE, Qwen3-MoE, DeepSeek-V2/V3 and
gpt-oss checkpoints <-> moe_jax, without PyTorch (hf_deepseek.py's and
hf_gpt_oss.py's docstrings give what DeepSeek's latent attention and
routing, and gpt-oss's sinks, biases and interleaved experts, add to the
list below).

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
  the others' gate_proj / up_proj / down_proj are our wi_gate / wi / wo
  (moe_jax/core/experts/mlp.py). transformers 5's fused layout
  (gate_up_proj, down_proj) also imports (hf_tensors.py); exports write
  the original per-expert layout that every transformers version reads.
- Routing: softmax over all experts, top-k, then renormalised (Mixtral, or
  norm_topk_prob=true) or not: the top-k router (core/routing/topk.py) with
  its renormalize option. Imports use the dropless dispatcher, so no token
  is dropped, as in HF.
- Qwen2-MoE's shared expert (width shared_expert_intermediate_size = K_s·F)
  is our K_s shared experts, scaled by sigmoid(x·w_s) (shared_expert_gate);
  its q/k/v biases are qkv_bias. In both Qwens mlp_only_layers = [0..k-1]
  is first_dense_layers = k and decoder_sparse_step is moe_every.
- QK-norm: OLMoE's q_norm [H·Dh] / k_norm [Hkv·Dh] (over all heads) and
  Qwen3-MoE's [Dh] ones (per head) are model.qk_norm 'all_heads' /
  'per_head' (models/norm.py); Qwen3's head_dim is model.head_dim.
- Windows: Mixtral's sliding_window, and Qwen3-MoE's with
  use_sliding_window=true, is model.sliding_window in every layer, as
  transformers 5 masks it.
- RMSNorm ε and RoPE θ come from the config; keys it leaves out take
  transformers' defaults for the family (hf_families.py). A YaRN
  rope_scaling is model.rope_scaling (models/yarn.py).

Not supported (one-line error naming the field): RoPE scalings other than
YaRN,
activations other than SiLU, non-prefix mlp_only_layers, Qwen2-MoE's
use_sliding_window (per-layer windows), attention_bias=true (an o_proj
bias), OLMoE's clip_qkv, and a head_dim apart from D/H in Qwen2-MoE and
OLMoE. A checkpoint whose tensors do not match its config.json (missing,
extra, or of another shape), that holds non-float tensors or that is
quantized (a quantization_config, or MXFP4 `*_blocks` / `*_scales`
tensors as gpt-oss was released) is refused before anything is converted.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import jax.numpy as jnp
import numpy as np
from flax import nnx

from moe_jax.convert import hf_deepseek, hf_gpt_oss
# The config half of the converter, re-exported: hf_moe is the public entry.
from moe_jax.convert.hf_config import (config_from_hf, config_to_hf,  # pylint: disable=unused-import
                                       family_for)
from moe_jax.convert.hf_families import FAMILIES, hf_family
from moe_jax.convert.hf_tensors import (hf_shapes, is_fused, links, to_ours,
                                        to_theirs)
from moe_jax.convert.safetensors_dir import INDEX, TensorReader, write_tensors
from moe_jax.errors import UserInputError
from moe_jax.files import atomic_folder
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM

# Buffers some older checkpoints saved; they hold nothing we need.
_IGNORED_SUFFIXES = ('rotary_emb.inv_freq',)
_FLOAT_DTYPES = ('F16', 'BF16', 'F32', 'F64')
# MXFP4 weights: 4-bit values packed in *_blocks, power-of-two *_scales.
_MXFP4_SUFFIXES = ('_blocks', '_scales')


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


def _check_tensors(reader: TensorReader, wanted: dict[str, tuple],
                   unused: tuple[str, ...] = ()) -> None:
  """One line for the first tensor that is missing, extra, of another shape
  or not a float, before anything is read. Names starting with one of
  `unused` (V3's multi-token-prediction layers) are not extra."""
  names = reader.names()
  mxfp4 = sorted(n for n in names if n.endswith(_MXFP4_SUFFIXES))
  if mxfp4:
    raise UserInputError(
        f'the checkpoint has MXFP4-quantized tensors ({mxfp4[0]!r}, '
        f'{len(mxfp4)} in all; gpt-oss\'s released experts), which are not '
        'read; dequantize the checkpoint to bf16/f32 first.')
  missing = sorted(set(wanted) - names)
  if missing:
    raise UserInputError(
        f'the checkpoint has no tensor {missing[0]!r} ({len(missing)} '
        'missing); its config.json does not match its weights (or it is not '
        'a supported architecture).')
  extra = sorted(n for n in names - set(wanted)
                 if not n.endswith(_IGNORED_SUFFIXES) and
                 not n.startswith(unused))
  if extra:
    raise UserInputError(
        f'the checkpoint has a tensor {extra[0]!r} ({len(extra)} extra) that '
        'its config.json does not account for; the config does not match '
        'the weights.')
  for name, shape in wanted.items():
    have, dtype = reader.info(name)
    if have != shape:
      raise UserInputError(
          f'tensor {name!r} has shape {list(have)}, but config.json implies '
          f'{list(shape)}; the config does not match the weights.')
    if dtype not in _FLOAT_DTYPES:
      raise UserInputError(f'tensor {name!r} is {dtype}; weights must be '
                           f'one of {", ".join(_FLOAT_DTYPES)}.')


def import_checkpoint(directory: str | pathlib.Path, dtype=np.float32,
                      **moe_overrides):
  """(ModelConfig, params as a nested dict of numpy arrays) of an HF folder,
  in the per-expert or transformers 5's fused expert layout."""
  directory = pathlib.Path(directory)
  if not (directory / 'config.json').is_file():
    raise UserInputError(f'{directory}/config.json is missing; pass a '
                         'Hugging Face model folder.')
  hf = json.loads((directory / 'config.json').read_text())
  config = config_from_hf(hf, **moe_overrides)
  reader = TensorReader(directory)
  _, state = _abstract(config)
  shapes = nnx.to_pure_dict(state)
  plan = [(link, _get(shapes, link.path).shape) for link in
          links(config, hf_family(hf), is_fused(reader.names()))]
  _check_tensors(reader, {name: want for link, shape in plan for name, want
                          in zip(link.hf, hf_shapes(link, shape))},
                 hf_deepseek.mtp_prefixes(hf))
  params, last = {}, ((), [])
  for link, shape in plan:
    # The fused gate_up_proj feeds two parameters: read it once.
    arrays = last[1] if link.hf == last[0] else [
        reader.get(name).astype(dtype) for name in link.hf]
    last = (link.hf, arrays)
    _set(params, link.path, to_ours(link, arrays, shape))
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
    directory: the output folder, written whole or not at all: an earlier
      export there is replaced (files it did not write, such as a
      tokenizer.json, are kept).
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
  for link in links(config, FAMILIES[hf['model_type']]):
    array = np.asarray(_get(params, link.path)).astype(dtype)
    if link.kind in hf_gpt_oss.INTERLEAVED:  # Two of ours, one of theirs.
      hf_gpt_oss.put_interleaved(tensors, link.hf[0], array, link.kind)
    else:
      tensors.update(zip(link.hf, to_theirs(link, array)))
  hf['torch_dtype'] = np.dtype(dtype).name
  directory = pathlib.Path(directory)
  if (directory.is_dir() and not (directory / 'config.json').is_file()
      and any(directory.iterdir())):
    raise UserInputError(
        f"'{directory}' holds files but no config.json, so it is not an "
        'earlier export and is not replaced; export to a new or empty folder.')
  # Written beside `directory` and renamed into place: a failure half-way
  # leaves no half-written folder and an earlier export as it was.
  with atomic_folder(directory, keep=_not_written_by_export) as tmp:
    names = write_tensors(tmp, tensors, max_shard_bytes)
    (tmp / 'config.json').write_text(json.dumps(hf, indent=2))
  return names


def _not_written_by_export(entry: pathlib.Path) -> bool:
  """What a re-export keeps of the folder it replaces: everything but an
  earlier export's config.json and tensors (e.g. a tokenizer.json)."""
  return not (entry.name in ('config.json', INDEX) or
              entry.name.endswith('.safetensors'))
