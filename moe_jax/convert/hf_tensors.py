"""Which Hugging Face tensor is which moe_jax parameter, and how each is
laid out (hf_moe.py's docstring gives the conventions).

Experts come in two layouts. The original one (every checkpoint on the Hub,
and what exports write) stores each expert's matrices apart, e.g.
`mlp.experts.3.gate_proj.weight` [F, D]. transformers 5 computes with the
experts fused, and save_pretrained(..., save_original_format=False) writes
them so, in every family under `mlp.` (Mixtral's `block_sparse_moe.` renamed):
`mlp.experts.gate_up_proj` [E, 2F, D], the gate's F rows then the up's
(the forward's `.chunk(2, dim=-1)`), and `mlp.experts.down_proj` [E, D, F]
(DeepSeek-V2/V3 too). Imports read either.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from moe_jax.convert import hf_gpt_oss
from moe_jax.convert.hf_families import Family
from moe_jax.models.config import ModelConfig

FFN_NAMES = ('wi_gate', 'wi', 'wo')
DENSE_HF = ('gate_proj', 'up_proj', 'down_proj')
FUSED_GATE_UP = 'mlp.experts.gate_up_proj'


@dataclasses.dataclass(frozen=True)
class Link:
  """One of our parameters and the HF tensor(s) it is made of.

  kind: 'vector' (HF 1-D, ours reshaped), 'same' (identical layout),
  'linear<n>' (HF W [out, in]; ours [in..., out...] with n input axes),
  'experts' (one HF W [out, in] per expert, ours stacked [E, in, out]), or
  in the fused layout 'fused_gate' / 'fused_up' (the two halves of
  gate_up_proj [E, 2F, D]) and 'fused_down' (down_proj [E, D, F]), or
  gpt-oss's 'even' / 'odd' (the interleaved halves of gate_up_proj
  [E, D, 2F] or its bias [E, 2F]; hf_gpt_oss.py).
  """
  hf: tuple[str, ...]
  path: tuple
  kind: str


def is_fused(names) -> bool:
  """Whether a checkpoint's tensor names are in the fused expert layout."""
  return any(n.endswith(FUSED_GATE_UP) for n in names)


def _attention(c: ModelConfig, p: str, b: tuple) -> list[Link]:
  links = [Link((p + 'self_attn.o_proj.weight',), b + ('attn', 'wo'),
                'linear2')]
  for n in 'qkv':
    links.append(Link((p + f'self_attn.{n}_proj.weight',),
                      b + ('attn', 'w' + n), 'linear1'))
    if c.qkv_bias:
      links.append(Link((p + f'self_attn.{n}_proj.bias',),
                        b + ('attn', 'b' + n), 'vector'))
  if c.attn_out_bias:
    links.append(Link((p + 'self_attn.o_proj.bias',), b + ('attn', 'bo'),
                      'vector'))
  if c.attention_sinks:
    links.append(Link((p + 'self_attn.sinks',), b + ('attn', 'sinks'),
                      'vector'))
  if c.qk_norm is not None:
    links += [Link((p + f'self_attn.{n}_norm.weight',),
                   b + ('attn', f'{n}_norm', 'scale'), 'vector') for n in 'qk']
  return links


def _mla(c: ModelConfig, p: str, b: tuple) -> list[Link]:
  """DeepSeek's latent attention (hf_deepseek.py's docstring has the names;
  its RoPE rows are reordered there, after these plain transposes)."""
  names = ({'wq': 'q_proj'} if c.mla.q_lora_rank is None else
           {'wq_a': 'q_a_proj', 'wq_b': 'q_b_proj'})
  names.update(wkv_a='kv_a_proj_with_mqa', wkv_b='kv_b_proj')
  norms = {'kv_norm': 'kv_a_layernorm'}
  if c.mla.q_lora_rank is not None:
    norms['q_norm'] = 'q_a_layernorm'
  p += 'self_attn.'
  return ([Link((p + 'o_proj.weight',), b + ('attn', 'wo'), 'linear2')] +
          [Link((p + f'{h}.weight',), b + ('attn', ours), 'linear1')
           for ours, h in names.items()] +
          [Link((p + f'{h}.weight',), b + ('attn', ours, 'scale'), 'vector')
           for ours, h in norms.items()])


def _experts(m, q: str, ffn: tuple, family: Family, fused: bool):
  if family.gpt_oss:  # Fused, interleaved, with biases (hf_gpt_oss.py).
    gate_up, down = q + 'experts.gate_up_proj', q + 'experts.down_proj'
    return [Link((gate_up,), ffn + ('wi_gate',), 'even'),
            Link((gate_up,), ffn + ('wi',), 'odd'),
            Link((gate_up + '_bias',), ffn + ('bi_gate',), 'even'),
            Link((gate_up + '_bias',), ffn + ('bi',), 'odd'),
            Link((down,), ffn + ('wo',), 'same'),
            Link((down + '_bias',), ffn + ('bo',), 'same')]
  if fused:
    gate_up = (q + 'experts.gate_up_proj',)
    return [Link(gate_up, ffn + ('wi_gate',), 'fused_gate'),
            Link(gate_up, ffn + ('wi',), 'fused_up'),
            Link((q + 'experts.down_proj',), ffn + ('wo',), 'fused_down')]
  return [Link(tuple(q + f'experts.{e}.{h}.weight'
                     for e in range(m.num_experts)), ffn + (ours,), 'experts')
          for ours, h in zip(FFN_NAMES, family.expert_names)]


def links(config: ModelConfig, family: Family, fused: bool = False
          ) -> list[Link]:
  """Every parameter's Link, in the per-expert or the fused layout."""
  c, m = config, config.moe
  out = [Link(('model.embed_tokens.weight',), ('embed',), 'same'),
         Link(('model.norm.weight',), ('final_norm', 'scale'), 'vector')]
  if not c.tie_embeddings:
    out.append(Link(('lm_head.weight',), ('head',), 'linear1'))
  for i in range(c.num_layers):
    p, b = f'model.layers.{i}.', ('blocks', i)
    out += [Link((p + 'input_layernorm.weight',), b + ('attn_norm', 'scale'),
                 'vector'),
            Link((p + 'post_attention_layernorm.weight',),
                 b + ('ffn_norm', 'scale'), 'vector')]
    out += _attention(c, p, b) if c.mla is None else _mla(c, p, b)
    ffn = b + ('ffn',)
    if not c.is_moe_layer(i):
      out += [Link((p + f'mlp.{h}.weight',), ffn + (ours,), 'linear1')
              for ours, h in zip(FFN_NAMES, DENSE_HF)]
      continue
    q = p + ('mlp.' if fused else family.moe_prefix)
    router = q + family.router_name
    out.append(Link((router + '.weight',), ffn + ('router_kernel',),
                    'linear1'))
    if m.use_bias:
      out.append(Link((router + '.bias',), ffn + ('router_bias_logits',),
                      'vector'))
    if family.router_bias:
      out.append(Link((q + 'gate.e_score_correction_bias',),
                      ffn + ('router_bias',), 'vector'))
    out += _experts(m, q, ffn, family, fused)
    if m.num_shared_experts:
      out += [Link((q + f'{family.shared_prefix}{h}.weight',),
                   ffn + ('shared_' + ours,), 'linear1')
              for ours, h in zip(FFN_NAMES, DENSE_HF)]
    if m.shared_expert_gate:
      out.append(Link((q + 'shared_expert_gate.weight',),
                      ffn + ('shared_gate',), 'linear1'))
  return out


def hf_shapes(link: Link, shape: tuple[int, ...]) -> list[tuple[int, ...]]:
  """The shape of each of link.hf given our parameter's shape."""
  if link.kind == 'vector':
    return [(math.prod(shape),)]
  if link.kind.startswith('linear'):
    n = int(link.kind[len('linear'):])
    return [(math.prod(shape[n:]), math.prod(shape[:n]))]
  if link.kind == 'experts':  # [E, in, out] -> E of [out, in].
    return [(shape[2], shape[1])] * shape[0]
  if link.kind in ('fused_gate', 'fused_up'):  # [E, D, F] -> [E, 2F, D].
    return [(shape[0], 2 * shape[2], shape[1])]
  if link.kind == 'fused_down':  # [E, F, D] -> [E, D, F].
    return [(shape[0], shape[2], shape[1])]
  if link.kind in hf_gpt_oss.INTERLEAVED:  # [..., F] -> [..., 2F].
    return [tuple(shape[:-1]) + (2 * shape[-1],)]
  return [tuple(shape)]


def to_ours(link: Link, arrays: list[np.ndarray], shape) -> np.ndarray:
  """Our parameter of `shape` from the HF tensors of link.hf."""
  if link.kind == 'experts':
    return np.stack([a.T for a in arrays])
  if link.kind in ('fused_gate', 'fused_up'):
    f = shape[2]
    half = slice(0, f) if link.kind == 'fused_gate' else slice(f, 2 * f)
    return arrays[0][:, half].transpose(0, 2, 1)
  if link.kind == 'fused_down':
    return arrays[0].transpose(0, 2, 1)
  if link.kind in hf_gpt_oss.INTERLEAVED:
    return hf_gpt_oss.interleaved_half(arrays[0], link.kind)
  if link.kind.startswith('linear'):
    return arrays[0].T.reshape(shape)
  return arrays[0].reshape(shape)


def to_theirs(link: Link, array: np.ndarray) -> list[np.ndarray]:
  """The HF tensors of link.hf from our parameter (original layout only:
  exports never write the fused one; gpt-oss's interleaved halves are
  merged by hf_gpt_oss.put_interleaved instead)."""
  if link.kind == 'experts':
    return [w.T for w in array]
  if link.kind.startswith('linear'):
    n = int(link.kind[len('linear'):])
    return [array.reshape(math.prod(array.shape[:n]), -1).T]
  return [array.reshape(-1) if link.kind == 'vector' else array]
