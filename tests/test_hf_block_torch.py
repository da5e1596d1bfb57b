"""benchmarks/hf_block.py: a --smoke run times our dropless SwiGLU layer
beside transformers' MixtralSparseMoeBlock (torch-gated: the worker needs
torch); the agreement check refuses a different function; bad flags."""

import json
import subprocess
import sys

import numpy as np
import pytest
from testlib import REPO

from benchmarks import hf_block

pytestmark = pytest.mark.slow


def test_smoke_times_both_after_they_agree(tmp_path):
  pytest.importorskip('torch')
  pytest.importorskip('transformers')
  out = tmp_path / 'hf_block.json'
  proc = subprocess.run(
      [sys.executable, 'benchmarks/hf_block.py', '--smoke', f'--out={out}'],
      cwd=REPO, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-5000:]
  result = json.loads(out.read_text())
  assert result['threads'] == 1 and len(result['cpus']) == 1
  assert '--xla_cpu_multi_thread_eigen=false' in result['xla_flags']
  rows = result['rows']
  assert [(r['mode'], r['hf_impl']) for r in rows] == [
      ('fwd', 'eager'), ('fwd', 'grouped_mm'),
      ('fwdbwd', 'eager'), ('fwdbwd', 'grouped_mm')]
  for row in rows:
    assert row['ours_ms'] > 0 and row['hf_ms'] > 0
    assert np.isfinite(row['median_ratio']) and row['median_ratio'] > 0
    assert row['max_rel_diff_y'] <= hf_block.TOL
  assert all(r['max_rel_diff_dx'] <= hf_block.TOL for r in rows[2:])


def test_weights_map_to_ours_by_hand():
  w = hf_block.hf_weights(hf_block.SMOKE)
  ours = hf_block.our_params(w)
  f = hf_block.SMOKE['F']
  # gate [E, D] -> [D, E]; gate_up_proj [E, 2F, D]: gate rows first.
  np.testing.assert_array_equal(ours['router_kernel'], w['gate'].T)
  np.testing.assert_array_equal(ours['wi_gate'][1, :, 3],
                                w['gate_up_proj'][1, 3, :])
  np.testing.assert_array_equal(ours['wi'][1, :, 3],
                                w['gate_up_proj'][1, f + 3, :])
  np.testing.assert_array_equal(ours['wo'][2, 5, :], w['down_proj'][2, :, 5])


def test_a_different_function_is_refused():
  theirs = np.array([[1.0, -2.0]])
  assert hf_block.agreement(theirs + 1e-6, theirs, 'y') <= hf_block.TOL
  with pytest.raises(SystemExit, match=r'y differs from transformers by 0\.05'
                     ' of its largest value'):
    hf_block.agreement(theirs + [[0.0, 0.1]], theirs, 'y')


@pytest.mark.parametrize('flag, message', [
    ('--modes=fwd,train', "--modes: unknown ['train']"),
    ('--threads=0', '--threads=0: use 1 to')])
def test_bad_flags_are_one_line(capsys, flag, message):
  with pytest.raises(SystemExit) as exit_info:
    hf_block.main([flag])
  assert exit_info.value.code != 0
  assert message in capsys.readouterr().err.strip().splitlines()[-1]
