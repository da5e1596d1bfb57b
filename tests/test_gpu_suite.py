"""benchmarks/gpu_suite.py: its --cpu-smoke run (every part at tiny sizes,
on 2 CPU devices so the all-to-all part runs) writes a JSON with every part
and finite numbers; the host-side expected exchange by hand; bad --parts."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from testlib import REPO, multi_device_env

from benchmarks import gpu_suite, gpu_suite_parts
from moe_jax.core.dispatch import DISPATCHERS

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp('gpu_suite') / 'gpu_suite.json'
  proc = subprocess.run(
      [sys.executable, 'benchmarks/gpu_suite.py', '--cpu-smoke',
       '--peak-flops=1e12', f'--out={out}'], cwd=REPO,
      env=multi_device_env(2, fast_compile=True), capture_output=True,
      text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  return json.loads(out.read_text())


def _numbers(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _numbers(v)
  elif isinstance(tree, list):
    for v in tree:
      yield from _numbers(v)
  elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
    yield tree


def test_smoke_has_every_part_with_finite_numbers(smoke):
  parts = smoke['parts']
  assert smoke['mode'] == 'cpu-smoke' and smoke['complete']
  assert sorted(parts) == sorted(gpu_suite.PARTS)
  numbers = list(_numbers(parts))
  assert numbers and all(math.isfinite(n) for n in numbers)
  # Every registered dispatcher has its row, each timed.
  rows = parts['layer']['rows']
  assert [r['dispatcher'] for r in rows] == list(DISPATCHERS)
  assert all(r['moe_ms'] > 0 and r['dense_ms'] > 0 for r in rows)
  assert parts['ragged']['ragged_over_dropless'] > 0
  for row in parts['mfu']['rows']:
    assert row['flops_per_token'] > 0 and 0 < row['mfu'] < 1
  # The MoE model's extra experts are total, not active, parameters.
  dense, moe = parts['mfu']['rows']
  assert moe['params_total'] > dense['params_total']
  assert moe['params_active'] == pytest.approx(dense['params_active'],
                                               rel=0.01)


def test_smoke_exchange_ran_and_matched(smoke):
  a2a = smoke['parts']['ragged_all_to_all']
  assert a2a['devices'] == 2 and a2a['impl'] == 'dense'  # XLA:CPU.
  assert a2a['max_abs_error'] == 0.0
  assert 0 < a2a['rows_sent'] <= a2a['rows_buffered']


def test_expected_exchange_by_hand():
  # 2 devices, 2 rows per slot, D = 1: value 10·p + q + row/10.
  buffers = np.array([[[[0.0], [0.1]], [[1.0], [1.1]]],
                      [[[10.0], [10.1]], [[11.0], [11.1]]]])
  sizes = np.array([[2, 1],    # device 0 sends 2 rows to 0, 1 to 1
                    [0, 2]])   # device 1 sends 0 rows to 0, 2 to 1
  want = np.array([[[[0.0], [0.1]], [[0.0], [0.0]]],      # 0 gets 0's, 1's
                   [[[1.0], [0.0]], [[11.0], [11.1]]]])   # 1 gets 0's, 1's
  np.testing.assert_array_equal(
      gpu_suite_parts.expected_exchange(buffers, sizes), want)


def test_unknown_part_is_one_line(capsys):
  with pytest.raises(SystemExit) as exit_info:
    gpu_suite.main(['--parts=layer,bogus'])
  assert exit_info.value.code != 0
  err = capsys.readouterr().err.strip().splitlines()[-1]
  assert "unknown ['bogus']" in err and 'choose from' in err
