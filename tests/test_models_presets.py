"""Architecture presets against their published sizes, and the accounting
(counts, per-device shards, FLOPs) on a hand-computed model."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from moe_jax.core.config import MoEConfig
from moe_jax.errors import UserInputError
from moe_jax.inspect import describe, load_config_file, markdown_row
from moe_jax.models import accounting
from moe_jax.models.config import ModelConfig
from moe_jax.models.transformer import TransformerLM
from moe_jax.train.setup import model_config
from testlib import REPO

PRESETS = sorted(p.stem for p in (REPO / 'configs/presets').glob('*.py'))
_MESH = accounting.parse_mesh('data:4,expert:4')


def _cost(name, arg=None, mesh=_MESH):
  config = load_config_file(f'{REPO}/configs/presets/{name}.py' +
                            (f':{arg}' if arg else ''))
  return accounting.model_cost(model_config(config), mesh)


# (total, active) as published, in billions; the docstring of each preset
# cites the source. Active figures are given to 0.1B, so they are checked to
# half of that; totals to 1%.
PUBLISHED = {
    'mixtral_8x7b': (46.7, 12.9),
    'mixtral_8x22b': (141, 39),
    'deepseek_moe_16b': (16.4, 2.8),
    'olmoe_1b_7b': (6.9, 1.3),
    'qwen15_moe_a27b': (14.3, 2.7),
    'grok_1': (314, None),  # "25% of the weights active": checked below.
    'qwen3_30b_a3b': (30.5, 3.3),
    'qwen3_235b_a22b': (235, 22),
    'deepseek_v2_lite': (15.7, 2.4),
    'deepseek_v3': (671, 37),  # The main model; without the 14B MTP module.
    # Active without the input embedding, as the gpt-oss model card counts.
    'gpt_oss_20b': (20.9, 3.6),
    'gpt_oss_120b': (116.8, 5.1),
}
# Active figures published to two significant figures, checked relatively.
# DeepSeek counts them without the input embedding (a lookup, not a
# matmul): V2-Lite's 2.4B is 2.45B that way and 2.66B with it; V3's 37B is
# 36.63B (37.55B with it). Qwen3-30B-A3B's 3.3B is 3.35B here, every width
# as in its config.json (its total matches to 0.1%).
# gpt-oss's model card counts active parameters without it too (±1%).
ACTIVE_RELATIVE = {'qwen3_30b_a3b': 0.02, 'qwen3_235b_a22b': 0.01,
                   'deepseek_v2_lite': 0.025, 'deepseek_v3': 0.015,
                   'gpt_oss_20b': 0.01, 'gpt_oss_120b': 0.01}
WITHOUT_INPUT_EMBEDDING = ('deepseek_v2_lite', 'deepseek_v3', 'gpt_oss_20b',
                           'gpt_oss_120b')


def test_every_preset_is_checked():
  assert set(PRESETS) == set(PUBLISHED) | {'switch_base', 'gshard'}


@pytest.mark.parametrize('name', sorted(PUBLISHED))
def test_preset_matches_its_published_size(name):
  total, active = PUBLISHED[name]
  cost = _cost(name)
  assert abs(cost.total / 1e9 - total) <= 0.01 * total, cost.total
  if name.startswith('mixtral'):  # Published as 12.9B and 39B: ±1%.
    assert abs(cost.active / 1e9 - active) <= 0.01 * active, cost.active
  elif name in ACTIVE_RELATIVE:
    counted = cost.active
    if name in WITHOUT_INPUT_EMBEDDING:
      mcfg = model_config(load_config_file(
          f'{REPO}/configs/presets/{name}.py'))
      counted -= mcfg.vocab_size * mcfg.d_model
    assert abs(counted / 1e9 - active) <= ACTIVE_RELATIVE[name] * active, (
        counted)
  elif active is not None:
    assert abs(cost.active / 1e9 - active) <= 0.05 + 1e-9, cost.active


def test_grok_experts_are_a_quarter_active():
  cost = _cost('grok_1')
  experts = 64 * 8 * 3 * 6144 * 32768  # Layers × E × (3 SwiGLU matrices).
  assert cost.total - cost.active == experts * 3 // 4


def test_encoder_decoder_presets_differ_only_by_rounding():
  # Switch-Base, "7B" (Table 9, one significant figure): 12 MoE layers of
  # 128 GEGLU experts plus T5-Base-sized dense parts.
  switch = _cost('switch_base')
  assert round(switch.total / 1e9) == 7
  experts = 12 * 128 * 3 * 768 * 2048
  assert switch.total - experts == switch.active - experts // 128
  # GShard "600B": 18 MoE layers × 2048 experts × 2·1024·8192 is 618.5B on
  # its own; the rest (attention, dense FFNs, embeddings) is 0.6B.
  gshard = _cost('gshard')
  experts = 18 * 2048 * 2 * 1024 * 8192
  assert 0 < gshard.total - experts < 0.7e9
  assert gshard.total - gshard.active == experts * (2048 - 2) // 2048


@pytest.mark.parametrize('name', PRESETS)
def test_tiny_preset_keeps_the_shape(name):
  full = model_config(load_config_file(f'{REPO}/configs/presets/{name}.py'))
  tiny = model_config(load_config_file(f'{REPO}/configs/presets/{name}.py:tiny'))
  for field in ('moe_every', 'first_dense_layers', 'tie_embeddings',
                'qkv_bias', 'qk_norm', 'rope_scaling', 'attention_sinks',
                'attn_out_bias', 'full_attention_every'):
    assert getattr(tiny, field) == getattr(full, field), field
  assert (tiny.sliding_window is None) == (full.sliding_window is None)
  for field in ('mla', 'head_dim'):  # Shrunk, but present or absent alike.
    assert (getattr(tiny, field) is None) == (getattr(full, field) is None)
  if full.head_dim is not None:  # Qwen3's and gpt-oss's H·Dh / D.
    assert (tiny.num_heads * tiny.head_dim * full.d_model ==
            full.num_heads * full.head_dim * tiny.d_model)
  if full.mla is not None:
    assert ((tiny.mla.q_lora_rank is None) ==
            (full.mla.q_lora_rank is None))
  for field in ('top_k', 'router', 'num_shared_experts', 'shared_expert_gate',
                'router_options', 'expert_type', 'use_bias'):
    assert getattr(tiny.moe, field) == getattr(full.moe, field), field
  assert tiny.moe.num_experts == min(full.moe.num_experts, 64)
  assert (tiny.num_heads // tiny.kv_heads == full.num_heads // full.kv_heads)
  assert [tiny.is_moe_layer(i) for i in range(tiny.num_layers)][-2:] == (
      [full.is_moe_layer(i) for i in range(full.num_layers)][-2:])
  assert tiny.vocab_size == 256 and tiny.d_model <= 96
  # The whole forward pass traces (shapes only: compiling each costs more).
  logits, _ = nnx.eval_shape(lambda: TransformerLM(tiny, rngs=nnx.Rngs(0))(
      jnp.zeros((2, 16), jnp.int32)))
  assert logits.shape == (2, 16, 256)


@pytest.mark.slow
def test_gpt_oss_tiny_trains_three_steps_through_the_cli(tmp_path):
  # gpt-oss's sinks, biases, clamped experts and window pattern, trained
  # and checkpointed by the command a user runs.
  proc = subprocess.run(
      [sys.executable, '-m', 'moe_jax.main',
       '--config=configs/presets/gpt_oss_20b.py:tiny', f'--workdir={tmp_path}',
       '--config.train.num_steps=3', '--config.train.log_every=1',
       '--config.train.final_eval_batches=2'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '(2 MoE, E=32, K=4)' in proc.stdout
  records = [json.loads(line) for line in
             (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in records if 'loss' in r]
  assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
  assert (tmp_path / 'checkpoints' / '3').is_dir()


def _hand_model():
  # V=10, D=8, 2 layers (layer 1 MoE: E=4, K=2, F=6 gelu), 4 heads of 2
  # sharing 2 kv heads, dense F=8, untied embeddings.
  return ModelConfig(vocab_size=10, d_model=8, num_layers=2, num_heads=4,
                     num_kv_heads=2, d_ff=8, moe_every=2, max_len=8,
                     moe=MoEConfig(num_experts=4, top_k=2, d_ff=6,
                                   router='topk'))


def test_accounting_on_a_hand_computed_model():
  embed = head = 10 * 8
  attention = 8 * 4 * 2 + 2 * (8 * 2 * 2) + 4 * 2 * 8  # q, k and v, o
  norms = 2 * 8  # Two per block; the final norm is counted below.
  dense = 8 * 8 + 8 * 8
  experts = 4 * (8 * 6 + 6 * 8)
  router = 8 * 4
  total = (embed + head + 8 + 2 * (attention + norms) + dense + experts +
           router)
  cost = accounting.model_cost(_hand_model(),
                               accounting.parse_mesh('expert:2,model:2'))
  assert cost.total == total == 1128
  assert cost.active == total - experts // 2  # K/E = 1/2 of the experts.
  # On expert:2 × model:2, heads (q, k, v, o) and FFN widths split over
  # 'model', experts over 'expert' as well; embeddings, norms and the
  # router are replicated.
  per_device = (embed + head + 8 + 2 * (attention // 2 + norms) +
                dense // 2 + experts // 4 + router)
  assert cost.device_params == per_device == 584
  assert cost.device_adam_bytes == 2 * 4 * per_device
  # 6 × the active params less the input embedding (a lookup), plus
  # attention at L = max_len = 8: 12 · 2 layers · 4 heads · 2 · 8.
  assert cost.train_flops_per_token == (6 * (cost.active - embed) +
                                       12 * 2 * 4 * 2 * 8)
  assert cost.weight_bytes('bf16') == 2 * total
  assert cost.weight_bytes('int8') == total


def test_accounting_with_fsdp_splits_every_weight_over_data():
  mesh = accounting.parse_mesh('data:2,expert:2,model:2')
  off = accounting.model_cost(_hand_model(), mesh)
  on = accounting.model_cost(_hand_model(), mesh, fsdp=True)
  # Every parameter of the hand model has a D dim (embeddings, norms,
  # attention, FFNs, experts, router), so each device holds half of the
  # 584 it holds on expert:2 × model:2 (test above; data does not split
  # weights without FSDP).
  assert off.device_params == 584 and on.device_params == 584 // 2
  assert on.device_adam_bytes == 2 * 4 * (584 // 2)
  assert on.total == off.total
  # What moe_jax.inspect prints.
  assert '(8 devices, FSDP over data): 292 params' in describe('hand', on)
  assert '(8 devices): 584 params' in describe('hand', off)
  with pytest.raises(UserInputError, match=r'splits d_model=8 over the data '
                     r'axis \(3\)'):
    accounting.model_cost(_hand_model(), accounting.parse_mesh('data:3'),
                          fsdp=True)


def test_inspect_fsdp_flag():
  proc = subprocess.run(
      [sys.executable, '-m', 'moe_jax.inspect', '--mesh=data:3', '--fsdp',
       '--config=configs/presets/olmoe_1b_7b.py'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'error: mesh.fsdp=True splits d_model=2048 over the data axis (3), '
      'which does not divide it; use a data axis that divides 2048 or set '
      '--config.mesh.fsdp=False.']


def test_accounting_equals_the_whole_model_traced():
  mcfg = _hand_model()
  params = nnx.state(nnx.eval_shape(lambda: TransformerLM(
      mcfg, rngs=nnx.Rngs(0))), nnx.Param)
  assert sum(x.size for x in jax.tree.leaves(params)) == (
      accounting.model_cost(mcfg, _MESH).total)


def test_bad_mesh_is_one_line():
  with pytest.raises(UserInputError, match='--mesh entry'):
    accounting.parse_mesh('data:8,pipeline:2')
  # The second data axis used to replace the first without a word.
  with pytest.raises(UserInputError, match="names axis 'data' twice"):
    accounting.parse_mesh('data:2,data:4')
  with pytest.raises(UserInputError, match='not divisible by the expert axis'):
    _cost('qwen15_moe_a27b', mesh=accounting.parse_mesh('expert:8'))


def test_markdown_row_and_cli():
  row = markdown_row('mixtral_8x7b', _cost('mixtral_8x7b'))
  assert row.startswith('| mixtral_8x7b | 46.70B | 12.88B | 174.0 GiB |')
  proc = subprocess.run(
      [sys.executable, '-m', 'moe_jax.inspect', '--mesh=data:2,expert:3',
       '--config=configs/presets/olmoe_1b_7b.py'],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      'error: num_experts=64 is not divisible by the expert axis (3); use a '
      'multiple of 3 experts or a smaller mesh expert axis.']
