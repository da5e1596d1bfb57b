"""Expert-parallel MoE layer on 8 CPU devices: exactness and collectives.

JAX fixes the device count when its backend starts, and the rest of the suite
runs on one device, so the multi-device work runs once, in a subprocess of
tests/_parallel_moe.py started with XLA_FLAGS forcing 8 host devices. It
saves the layer's outputs, gradients, compiled HLO and shard sizes; the
assertions are here.

Cases: top-1 switch and top-2 gshard (second_policy='all', so nothing is
random), both with capacity drops, on meshes (data, expert, model) =
(8,1,1), (2,4,1), (1,8,1) and (2,2,2), each compared with one device without
a mesh. The dropless dispatchers on expert-parallel meshes: 'dropless' on
(2,4,1) and (1,8,1), 'dropless_ragged' and 'dropless_skewed' (every choice
to one device) on (2,4,1). The fused dispatcher on (4,1,2) (its loop inside
shard_map, weights split over 'model') and (2,4,1) (the index twin), and
'dropless_fused' on (2,4,1).
"""

import json
import pathlib
import re

import numpy as np
import pytest
from testlib import load_npz, run_device_script

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tests' / '_parallel_moe.py'
NUM_DEVICES = 8
CASES = ('switch', 'gshard')
MESHES = ('8x1x1', '2x4x1', '1x8x1', '2x2x2')
EP_MESHES = ('2x4x1', '1x8x1')  # Meshes with an expert axis > 1.
DROPLESS = (('dropless', '2x4x1'), ('dropless', '1x8x1'),
            ('dropless_ragged', '2x4x1'), ('dropless_skewed', '2x4x1'))
FUSED = (('fused', '4x1x2'), ('fused', '2x4x1'), ('dropless_fused', '2x4x1'))
SOFT_MESHES = ('2x4x1', '1x8x1', '2x2x2')
RTOL = 1e-5  # float32; the meshes only reorder the batch reductions.

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  """The directory the helper script filled (see its docstring)."""
  out = tmp_path_factory.mktemp('parallel_moe')
  run_device_script(SCRIPT, out, NUM_DEVICES, timeout=300)
  return out


def _load(results, case, mesh):
  return load_npz(results / f'{case}_{mesh}.npz')


def _shards(results):
  return json.loads((results / 'shards.json').read_text())


# ------------------------------------------------------------ exactness --


@pytest.mark.parametrize('case', CASES)
def test_reference_has_drops(results, case):
  """The comparison below covers dropped tokens, not only the easy path."""
  ref = _load(results, case, 'single')
  assert np.max(ref['aux_dropped_fraction']) > 0, ref['aux_dropped_fraction']
  assert ref['aux_unrouted_fraction'] < 0.5  # Most tokens still routed.


@pytest.mark.parametrize('mesh', MESHES)
@pytest.mark.parametrize('case', CASES)
def test_layer_output_and_gradients_match_one_device(results, case, mesh):
  _assert_matches_one_device(results, case, mesh)


@pytest.mark.parametrize('case, mesh', DROPLESS)
def test_dropless_output_and_gradients_match_one_device(results, case, mesh):
  _assert_matches_one_device(results, case, mesh)


@pytest.mark.parametrize('case, mesh', FUSED)
def test_fused_output_and_gradients_match_one_device(results, case, mesh):
  _assert_matches_one_device(results, case, mesh)


@pytest.mark.parametrize('mesh', SOFT_MESHES)
def test_soft_moe_output_and_gradients_match_one_device(results, mesh):
  _assert_matches_one_device(results, 'soft', mesh)


def test_gpt_oss_biases_match_one_device(results):
  """moe.use_bias and the clamped experts on expert:2 x model:2: the
  output bias is added once, not once per F shard."""
  _assert_matches_one_device(results, 'gpt_oss', '2x2x2')


@pytest.mark.parametrize('case', sorted({c for c, _ in DROPLESS}))
def test_dropless_reference_drops_nothing(results, case):
  ref = _load(results, case, 'single')
  assert np.max(ref['aux_dropped_fraction']) == 0
  assert ref['aux_unrouted_fraction'] == 0


def test_skewed_case_sends_every_choice_to_one_device(results):
  """Experts 0 and 1 get every choice; on (2,4,1) both live on the first
  device of the expert axis, which so receives the exchange's full bound."""
  fraction = _load(results, 'dropless_skewed', 'single')['aux_expert_fraction']
  np.testing.assert_allclose(fraction[:2], 0.5)
  assert not np.any(fraction[2:])


def _assert_matches_one_device(results, case, mesh):
  ref = _load(results, case, 'single')
  got = _load(results, case, mesh)
  assert sorted(got) == sorted(ref)
  grads = [k for k in ref if k.startswith('grad_')]
  # Every parameter (router included) and x have a gradient to compare.
  assert {'grad_x', 'grad_router_kernel', 'grad_wi', 'grad_wo'} <= set(grads)
  for name in ['loss', 'y', *grads]:
    want, have = ref[name], got[name]
    assert have.shape == want.shape and have.dtype == want.dtype == np.float32
    # Relative to the array's scale: elementwise rtol alone would be
    # meaningless for entries that are 0 up to rounding.
    np.testing.assert_allclose(
        have, want, rtol=RTOL, atol=RTOL * float(np.max(np.abs(want))),
        err_msg=f'{case} on mesh {mesh}: {name}')
  # The router's decisions (and so the drops) are the same.
  for name in ('aux_dropped_fraction', 'aux_unrouted_fraction',
               'aux_expert_fraction'):
    np.testing.assert_array_equal(got[name], ref[name], err_msg=name)


# ---------------------------------------------------------- collectives --

_INSTRUCTION = re.compile(r'^\s*(?:ROOT\s+)?%\S+\s*=\s*(.*?)\s([a-z][a-z0-9-]*)\(')
_COLLECTIVES = ('all-to-all', 'all-gather', 'all-reduce', 'reduce-scatter',
                'collective-permute', 'all-gather-start', 'all-reduce-start',
                'collective-permute-start')


def _collectives(hlo: str) -> list[tuple[str, str]]:
  """(opcode, result shape) of every collective instruction in HLO text."""
  found = []
  for line in hlo.splitlines():
    match = _INSTRUCTION.match(line)
    if match and match.group(2) in _COLLECTIVES:
      found.append((match.group(2), match.group(1)))
  return found


@pytest.mark.parametrize('mesh', EP_MESHES)
@pytest.mark.parametrize('case', CASES)
def test_expert_parallel_exchanges_tokens_with_all_to_all(results, case, mesh):
  """Forward and backward move tokens with all-to-all, never all-gather.

  An all-gather (of tokens or of expert weights) is what a partitioner
  produces when the explicit exchange is lost; it also costs every device
  the whole batch or all experts. No collective may produce an array of a
  full expert-weight shape either: that would mean some device holds (or
  sums) every expert.
  """
  collectives = _collectives((results / f'{case}_{mesh}.hlo').read_text())
  opcodes = [op for op, _ in collectives]
  # Dispatch and return, in the forward pass and again in the backward.
  assert opcodes.count('all-to-all') >= 2, opcodes
  _assert_no_gathers(results, case, mesh, collectives)


@pytest.mark.parametrize('mesh', EP_MESHES)
def test_soft_moe_exchanges_slots_with_all_to_all(results, mesh):
  """Soft MoE's slots go to their experts by all-to-all (there and back, in
  the forward and the backward pass), as a capacity router's buffers do;
  no all-gather of tokens or expert weights."""
  collectives = _collectives((results / f'soft_{mesh}.hlo').read_text())
  opcodes = [op for op, _ in collectives]
  assert opcodes.count('all-to-all') >= 4, opcodes
  _assert_no_gathers(results, 'soft', mesh, collectives)


@pytest.mark.parametrize('case, mesh', DROPLESS)
def test_dropless_exchanges_counts_then_tokens_with_all_to_all(results, case,
                                                               mesh):
  """The per-expert counts (int32) go first, then the tokens (float32): out
  and back in the forward pass and again in the backward; no all-gather."""
  collectives = _collectives((results / f'{case}_{mesh}.hlo').read_text())
  a2a = [shape for op, shape in collectives if op == 'all-to-all']
  assert sum('s32[' in shape for shape in a2a) >= 1, a2a
  assert sum('f32[' in shape for shape in a2a) >= 4, a2a
  _assert_no_gathers(results, case, mesh, collectives)


def _assert_no_gathers(results, case, mesh, collectives):
  gathers = [c for c in collectives if c[0].startswith('all-gather')]
  assert not gathers, gathers
  shards = _shards(results)[f'{case}_{mesh}']
  full_shapes = {'f32[' + ','.join(map(str, v['shape'])) + ']'
                 for k, v in shards.items() if k.startswith('param_')}
  offending = [c for c in collectives
               if any(shape in c[1] for shape in full_shapes)]
  assert not offending, (full_shapes, offending)


@pytest.mark.parametrize('mesh', EP_MESHES)
@pytest.mark.parametrize('case', CASES)
def test_each_device_holds_its_share_of_experts(results, case, mesh):
  """Expert weights and their gradients: total / EP bytes per device."""
  _assert_holds_its_share(results, case, mesh)


@pytest.mark.parametrize('case, mesh', DROPLESS)
def test_dropless_device_holds_its_share_of_experts(results, case, mesh):
  _assert_holds_its_share(results, case, mesh)


def _assert_holds_its_share(results, case, mesh):
  report = _shards(results)[f'{case}_{mesh}']
  ep = report.pop('expert_axis')
  assert ep == int(mesh.split('x')[1]) > 1
  names = {k.split('_', 1)[1] for k in report}
  assert {'wi', 'wo'} <= names
  for kind in ('param', 'grad'):
    for name in names:
      entry = report[f'{kind}_{name}']
      assert len(entry['per_device']) == NUM_DEVICES
      assert set(entry['per_device']) == {entry['total'] // ep}, (
          kind, name, entry)
