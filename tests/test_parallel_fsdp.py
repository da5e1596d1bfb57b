"""Fully sharded data parallelism (mesh.fsdp=True) on 8 CPU devices: the
same training as one device, 1/data of the memory, the collectives it
should compile to, and checkpoints across the rule.

The multi-device work runs once, in a subprocess of tests/_parallel_fsdp.py
(see its docstring for what it writes); the assertions are here.
"""

import json
import pathlib
import re

import pytest
from testlib import assert_trees_close, load_npz, run_device_script

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tests' / '_parallel_fsdp.py'
NUM_DEVICES = 8
RTOL = 1e-5  # float32; the mesh and the rule only reorder reductions.
# The tiny switch config: V, D, F, E (one MoE layer, one dense).
V, D, F, E = 256, 32, 64, 8

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('parallel_fsdp')
  run_device_script(SCRIPT, out, NUM_DEVICES, timeout=600, fast_compile=True)
  return out


def _load(path):
  return load_npz(path)


@pytest.mark.parametrize('case,reference', [
    ('fsdp_8x1x1_index', 'single_index'),
    ('fsdp_2x4x1_dropless', 'single_dropless')])
def test_fsdp_training_matches_one_device(results, case, reference):
  have = _load(results / f'steps_{case}.npz')
  want = _load(results / f'steps_{reference}.npz')
  assert have['loss'].shape == (3,)
  assert_trees_close(have, want, RTOL, f'{case} vs {reference}')


@pytest.mark.parametrize('mesh,data_axis', [('8x1x1', 8), ('2x4x1', 2)])
def test_per_device_memory_falls_by_the_data_axis(results, mesh, data_axis):
  memory = json.loads((results / 'report.json').read_text())['memory']
  off, on = memory[f'{mesh}_off'], memory[f'{mesh}_on']
  for what in ('params', 'moments'):  # Measured from the arrays' shards.
    assert on[what] * data_axis == off[what], (what, off, on)
    # moe_jax.inspect's accounting predicts both exactly.
    for measured in (off, on):
      assert measured[what] == measured[f'predicted_{what}'], (what, measured)
  assert on['moments'] == 2 * on['params']  # Adam's mu and nu.


# ------------------------------------------------------------------- HLO --


def _entry_shapes(hlo: str) -> list[str]:
  """Shapes of the compiled step's per-device inputs and outputs."""
  entry = next(line for line in hlo.splitlines() if line.startswith('ENTRY'))
  return re.findall(r'f32\[[\d,]*\]', entry)


def _results_of(hlo: str, op: str) -> list[str]:
  return re.findall(r'= (f32\[[\d,]*\])\{[\d,]*\} ' + op + r'\(', hlo)


def _gathered_inputs(hlo: str) -> tuple[list[str], list[str]]:
  """(what the step's inputs that all-gathers read straight from hold, what
  all its array inputs hold), by the names tracing gave them."""
  held = dict(re.findall(
      r'%(param[.\d]*) = f32\S+ parameter\(\d+\).*?op_name="[^"]*?\.'
      r'(params|opt_state)', hlo))
  return ([held[a] for a in re.findall(r'all-gather\(%(param[.\d]*)\)', hlo)
           if a in held], list(held.values()))


@pytest.mark.parametrize('case,dp,ep', [('fsdp_8x1x1_index', 8, 1),
                                        ('fsdp_2x4x1_dropless', 2, 4)])
def test_hlo_gathers_weights_per_layer_and_reduce_scatters_experts(
    results, case, dp, ep):
  hlo = (results / f'hlo_{case}.txt').read_text()
  entry = _entry_shapes(hlo)
  # (as one device holds it without FSDP, as it holds it with FSDP).
  weights = {'expert wi': ([E // ep, D, F], [E // ep, D // dp, F]),
             'expert wo': ([E // ep, F, D], [E // ep, F, D // dp]),
             'embedding': ([V, D], [V, D // dp]),
             'output head': ([D, V], [D // dp, V])}
  gathered = _results_of(hlo, 'all-gather')
  for name, (whole, shard) in weights.items():
    whole = 'f32[%s]' % ','.join(map(str, whole))
    shard = 'f32[%s]' % ','.join(map(str, shard))
    # No device holds the whole weight (or a moment) between steps: the
    # step takes and returns shards of the weight and both moments.
    assert whole not in entry, (name, whole)
    assert entry.count(shard) >= 2 * 3, (name, shard)  # In and out, ×3.
    # Inside the step it is gathered where the layer uses it.
    assert whole in gathered, (name, whole, gathered)
  # The experts' gradients go back onto the shards by reduce-scatter.
  scattered = _results_of(hlo, 'reduce-scatter')
  for name in ('expert wi', 'expert wo'):
    shard = 'f32[%s]' % ','.join(map(str, weights[name][1]))
    assert shard in scattered, (name, shard, scattered)
  # Adam's moments are updated where they lie, never gathered.
  gathered_inputs, inputs = _gathered_inputs(hlo)
  assert inputs.count('opt_state') == 2 * inputs.count('params') > 0
  assert gathered_inputs and set(gathered_inputs) == {'params'}


# ----------------------------------------------------------- checkpoints --


@pytest.mark.parametrize('case,dp', [('off_from_on', 1), ('on_from_off', 8)])
def test_checkpoint_restores_across_the_rule(results, case, dp):
  """Saved with FSDP on (2,4,1) and restored without it on (2,4,1); that
  state saved again and restored with FSDP on (8,1,1)."""
  saved = _load(results / 'restored_saved.npz')
  restored = _load(results / f'restored_{case}.npz')
  assert sorted(restored) == sorted(saved)
  assert any(k.startswith('opt_state/') for k in saved)
  for key, want in saved.items():
    assert restored[key].tobytes() == want.tobytes(), key  # Bitwise.
  report = json.loads((results / 'report.json').read_text())['restored'][case]
  expert_leaves = 0
  for key, leaf in report.items():
    assert leaf['sharding_matches'], key
    if re.search(r'blocks/1/ffn/(wi|wo)/', key):  # Params and moments.
      expert_leaves += 1
      ep = 4 if case == 'off_from_on' else 1
      assert leaf['per_device'] * ep * dp == leaf['total'], (key, leaf)
  assert expert_leaves == 6
