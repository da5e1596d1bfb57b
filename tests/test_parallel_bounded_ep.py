"""Bounded-buffer dropless expert parallelism (moe.ep_buffer_factor) on 8
CPU devices, mesh (data, expert, model) = (2, 4, 1): E = 8 experts, 2 per
device of the expert axis. tests/_parallel_bounded_ep.py computes (one
subprocess); the assertions are here.

Each device holds one group of S = 16 tokens with K = 2 choices: M = 32
choices, M/4 = 8 per destination when balanced. Factor f gives slots of
R = ceil(f·32/4) rows: 8 at f = 1, 16 at f = 2.
"""

import json
import pathlib

import numpy as np
import pytest
from testlib import load_npz, run_device_script

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tests' / '_parallel_bounded_ep.py'
OVERFLOW = 'ep_overflow_rows'

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('bounded_ep')
  run_device_script(SCRIPT, out, 8, timeout=400, fast_compile=True)
  return out


def _load(results, name):
  return load_npz(results / f'{name}.npz')


def test_bounded_layer_equals_worst_case_bit_for_bit_when_all_fit(results):
  """f = 2 halves the worst-case slots (R = 16 of M = 32) and this
  routing still fits: output, loss and every gradient are bit-identical.
  (f >= EP is the worst case itself: test_parallel_dropless_layout.)"""
  today, bounded = (_load(results, 'layer_today'),
                    _load(results, 'layer_factor2'))
  assert bounded.pop('aux_' + OVERFLOW) == 0
  assert sorted(bounded) == sorted(today)
  assert {'y', 'loss', 'grad_x', 'grad_router_kernel', 'grad_wi'} <= set(today)
  for name, want in today.items():
    np.testing.assert_array_equal(bounded[name], want, err_msg=name)


def test_overflow_count_of_the_zero_router_by_hand(results):
  """Every token ties and picks experts 0 and 1, both on expert-axis device
  0: each device sends all 32 choices there, slots hold R = 8 at f = 1, so
  32 - 8 = 24 overflow per device and 8·24 = 192 in all."""
  assert _load(results, 'layer_skewed')['overflow'] == 192


def test_hand_built_skew_drops_exactly_the_rows_past_the_slot(results):
  """The plan of _parallel_bounded_ep.skewed_plan at f = 1 (R = 8): device
  0's slot wants expert 0 for tokens 0..15 (sorted first), then expert 1 for
  tokens 0, 4, 8, 12: it keeps expert 0's first 8 tokens and drops 8 + 4
  rows; the other slots get 4 rows each and fit. 12 per device, 96 in all;
  the output equals one device's with exactly those choices dropped."""
  plan = _load(results, 'plan')
  assert plan['overflow'] == 96
  assert np.max(np.abs(plan['y_ref'])) > 0
  np.testing.assert_array_equal(plan['y'], plan['y_ref'])


def test_retry_trains_exactly_as_the_worst_case_buffers(results):
  """f = 0.5 (slots of 4 rows) overflows every step; 'retry' reruns each on
  the worst-case step, so the parameters and losses equal the run without a
  bound, bit for bit, while the counters say what did not fit."""
  today, retry = _load(results, 'steps_today'), _load(results, 'steps_retry')
  assert np.all(retry.pop('moe_1/' + OVERFLOW) > 0)
  np.testing.assert_array_equal(retry.pop('ep_retried'), [1, 1])
  assert sorted(retry) == sorted(today)
  for name, want in today.items():
    np.testing.assert_array_equal(retry[name], want, err_msg=name)


def test_training_log_reports_overflow_per_layer(results):
  records = [json.loads(line) for line in
             (results / 'run' / 'metrics.jsonl').read_text().splitlines()]
  steps = [r for r in records if 'loss' in r]
  assert [r['ep_retried'] for r in steps] == [1, 1]
  assert all(r['moe_1/' + OVERFLOW] > 0 for r in steps)
  losses = _load(results, 'steps_today')['loss']
  np.testing.assert_array_equal([r['loss'] for r in steps], losses)
