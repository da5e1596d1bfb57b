"""Gradient accumulation equals one batch: N = 4 micro-batches against N = 1
at the same global batch, without a mesh and on (2, 4, 1), for switch,
top-k, sigmoid + bias and expert choice (and LoRA adapters on switch,
without a mesh); the per-micro-batch balance scope
is further away than the tolerance; a run resumed with N = 4 continues.

The work runs once in a subprocess of tests/_parallel_accumulate.py on 8
CPU devices (see its docstring). Steps use SGD at learning rate 1, so a
parameter's move is its gradient: 'grad/...' below is the gradient. Expert
choice runs at c = E, where its choices do not hinge on near-ties between
tokens (benchmarks/accumulation.py says why).
"""

import pathlib

import numpy as np
import pytest
from testlib import load_npz, run_device_script

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tests' / '_parallel_accumulate.py'
ATOL = 1e-5
ROUTERS = ('switch', 'topk', 'sigmoid_bias', 'expert_choice')

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  out = tmp_path_factory.mktemp('parallel_accumulate')
  run_device_script(SCRIPT, out, 8, timeout=1800, fast_compile=True)
  return out


def _load(results, name):
  return load_npz(results / f'{name}.npz')


def _compared(step):
  """The entries N = 4 must reproduce: every loss (total, cross-entropy,
  each layer's balance and z-loss), the summed expert load, gradients and
  the router state after the step."""
  return [k for k in step if k.endswith(('loss', 'cross_entropy',
                                         'expert_load'))
          or k.startswith(('grad/', 'router/'))]


@pytest.mark.parametrize('router, mesh', [
    (r, m) for r in ROUTERS for m in ('', '_mesh')] + [('lora', '')])
def test_four_micro_batches_equal_one_batch(results, router, mesh):
  one = _load(results, f'{router}_1')
  four = _load(results, f'{router}_4{mesh}')
  keys = _compared(one)
  assert 'moe_1/z_loss' in keys and 'moe_1/load_balance_loss' in keys
  assert sum(k.startswith('grad/') for k in keys) > 10
  assert sorted(k for k in four if k in keys) == sorted(keys)
  for key in keys:
    # Relative too: a loss of ~6 summed over 1024 tokens in float32 at
    # XLA's optimisation level 0 differs by ~7e-6 with any change of order.
    np.testing.assert_allclose(four[key], one[key], atol=ATOL, rtol=ATOL,
                               err_msg=f'{router}{mesh}: {key}')


def test_the_compared_steps_weigh_balance_and_move_the_bias(results):
  """A real balance gradient and a real bias move, not α·0 or γ·0."""
  for router in ('switch', 'topk', 'sigmoid_bias'):
    one = _load(results, f'{router}_1')
    assert one['moe_0/load_balance_loss'] > 0.5, router
  bias = [v for k, v in _load(results, 'sigmoid_bias_1').items()
          if k.startswith('router/')]
  assert len(bias) == 2 and all(np.any(b != 0) for b in bias)
  assert _load(results, 'expert_choice_1')['moe_0/load_balance_loss'] == 0


@pytest.mark.parametrize('mesh', ['', '_mesh'])
def test_micro_batch_scope_is_not_one_batch(results, mesh):
  """Pooling the balance loss per micro-batch (and per shard on the mesh)
  misses the N = 1 loss and gradient by far more than the tolerance."""
  one = _load(results, 'switch_1')
  micro = _load(results, f'micro_batch_4{mesh}')
  balance = max(abs(float(micro[k] - one[k])) for k in one
                if k.endswith('load_balance_loss'))
  grad = max(float(np.max(np.abs(micro[k] - one[k]))) for k in one
             if k.startswith('grad/'))
  assert balance > 100 * ATOL and grad > 10 * ATOL, (balance, grad)


def test_resumed_with_accumulation_continues_the_run(results):
  assert 'resumed from step 2' in (
      results / 'resumed' / 'stdout.txt').read_text()
  run = _load(results, 'run_final')
  resumed = _load(results, 'resumed_final')
  assert sorted(resumed) == sorted(run)  # The same checkpoint layout.
  assert any('router_bias' in k for k in run)
  for key, want in run.items():
    scale = float(np.max(np.abs(want))) if want.dtype.kind == 'f' else 0
    np.testing.assert_allclose(resumed[key], want, rtol=ATOL,
                               atol=ATOL * scale, err_msg=key)
