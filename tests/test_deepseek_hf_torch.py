"""The DeepSeek-V3 and V2 MoE blocks of `transformers` against moe_apply with
router='deepseek', on tiny random weights (float32, no drops).

Skipped without torch and transformers (see tests/test_convert_hf_torch.py
for how to install them).
"""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip(
    'torch', reason='PyTorch is an optional test extra (pip install torch '
    'transformers) used only to build the reference HF blocks')
transformers = pytest.importorskip(
    'transformers', reason='transformers is an optional test extra')

# pylint: disable=g-import-not-at-top,wrong-import-position
from moe_jax.core.config import MoEConfig
from moe_jax.core.moe import moe_apply

D, F, E, K = 16, 8, 16, 4
N_GROUP = 4


def _hf_block(version: str, topk_group: int):
  common = dict(hidden_size=D, moe_intermediate_size=F, n_shared_experts=1,
                num_experts_per_tok=K, n_group=N_GROUP,
                topk_group=topk_group, hidden_act='silu',
                num_attention_heads=4, num_key_value_heads=4)
  if version == 'v3':
    from transformers.models.deepseek_v3 import modeling_deepseek_v3 as m
    config = transformers.DeepseekV3Config(
        n_routed_experts=E, routed_scaling_factor=2.5, norm_topk_prob=True,
        **common)
    block = m.DeepseekV3MoE(config)
  else:
    from transformers.models.deepseek_v2 import modeling_deepseek_v2 as m
    config = transformers.DeepseekV2Config(
        n_routed_experts=E, routed_scaling_factor=16.0,
        topk_method='group_limited_greedy', **common)
    block = m.DeepseekV2Moe(config)
  # The modules start from empty or zero tensors; fill every one with
  # fan-in-scaled noise so routing is far from uniform.
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in block.named_parameters():
      p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(p.shape[-1]))
    if version == 'v3':  # The selection bias is a buffer.
      block.gate.e_score_correction_bias.copy_(
          torch.randn(E, generator=gen) * 0.05)
  return block.eval()


def _ours(block, version: str):
  """moe_apply's params and config for the same block."""
  t = lambda x: jnp.asarray(x.detach().numpy())
  gate_up = block.experts.gate_up_proj.detach()  # [E, 2F, D]: gate, then up.
  params = {
      'router_kernel': t(block.gate.weight).T,  # [D, E]
      'wi_gate': t(gate_up[:, :F]).transpose(0, 2, 1),  # [E, D, F]
      'wi': t(gate_up[:, F:]).transpose(0, 2, 1),
      'wo': t(block.experts.down_proj).transpose(0, 2, 1),  # [E, F, D]
      'shared_wi_gate': t(block.shared_experts.gate_proj.weight).T,
      'shared_wi': t(block.shared_experts.up_proj.weight).T,
      'shared_wo': t(block.shared_experts.down_proj.weight).T,
  }
  if version == 'v3':
    options = dict(n_group=N_GROUP, topk_group=block.gate.topk_group,
                   routed_scaling_factor=2.5, bias_update_rate=1e-3)
    params['router_bias'] = t(block.gate.e_score_correction_bias)
  else:
    options = dict(score='softmax', n_group=N_GROUP,
                   topk_group=block.gate.topk_group,
                   group_score='max', renormalize=False,
                   routed_scaling_factor=16.0)
  config = MoEConfig(router='deepseek', num_experts=E, top_k=K, d_ff=F,
                     expert_type='swiglu', dispatcher='dropless',
                     num_shared_experts=1,
                     router_options={'deepseek': options})
  return params, config


@pytest.mark.parametrize('version, topk_group',
                         [('v3', 2), ('v3', 1), ('v2', 2)])
def test_block_matches_transformers(version, topk_group):
  block = _hf_block(version, topk_group)
  x = np.random.default_rng(1).normal(size=(2, 24, D)).astype(np.float32)
  with torch.no_grad():
    ref = block(torch.tensor(x)).numpy()
    _, _, hf_index = block.gate(torch.tensor(x))
  params, config = _ours(block, version)
  out, aux = moe_apply(params, jnp.asarray(x), config, return_routing=True)
  err = np.abs(np.asarray(out) - ref).max()
  print(f'{version}, topk_group={topk_group}: max |ours - transformers| = '
        f'{err:.2e} (largest output {np.abs(ref).max():.2f})')
  assert err <= 1e-5, err
  # Same experts for every token (HF's topk is unsorted: compare sets).
  ours = np.sort(np.asarray(aux['routing']['plan'].expert_index).reshape(
      -1, K), axis=-1)
  np.testing.assert_array_equal(ours, np.sort(hf_index.numpy(), axis=-1))
  # The check means something only if the groups (and V3's bias) bind:
  # plain top-k over all experts would choose differently for many tokens.
  scores = (jnp.asarray(x).reshape(-1, D) @ params['router_kernel'])
  plain = np.sort(np.argsort(-np.asarray(scores), axis=-1)[:, :K], axis=-1)
  differ = (plain != ours).any(axis=-1).sum()
  print(f'  tokens whose experts differ from plain top-k: {differ} of '
        f'{len(ours)}')
  assert differ >= 5
