"""Every zoo router through the CLI in tiny mode, and on the (2,4,1) mesh.

The mesh work runs once in tests/_parallel_zoo.py with 8 host devices (the
suite itself runs on one); the assertions are here.
"""

import json
import subprocess
import sys

import numpy as np
import pytest
from testlib import REPO, multi_device_env, run_device_script

pytestmark = pytest.mark.slow

# relu_router, sigmoid_quantile and gshard_adaptive_balance train (and
# resume) through the trainer in tests/test_train_router_state.py; the CLI
# around it is the same for every router, so they are not repeated here.
ZOO_CONFIGS = ('expert_choice', 'sigmoid_loss_free', 'noisy_topk', 'bpr_top1',
               'fine_grained_shared', 'soft_moe', 'deepseek_v3_routing',
               'null_experts', 'uniform_top2')
CASES = ('expert_choice', 'sigmoid', 'noisy_topk', 'bpr', 'shared', 'soft',
         'deepseek', 'relu', 'null_experts', 'sigmoid_quantile', 'uniform',
         'adaptive_balance')


def _cli(config, workdir, *flags, cache_dir=None):
  # One device; backend optimisation level 0 compiles ~3x faster and
  # changes only CPU code generation, not what is computed.
  env = multi_device_env(1, fast_compile=True)
  if cache_dir:
    env['JAX_COMPILATION_CACHE_DIR'] = cache_dir
  return subprocess.run(
      [sys.executable, '-m', 'moe_jax.main', f'--config=configs/{config}',
       f'--workdir={workdir}', *flags], cwd=REPO, env=env,
      capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize('name', ZOO_CONFIGS)
def test_router_trains_through_the_cli(name, tmp_path, cache_dir):
  proc = _cli(f'{name}.py:tiny', tmp_path, '--config.train.num_steps=3',
              '--config.train.eval_every=3', '--config.train.log_every=1',
              cache_dir=cache_dir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'final validation loss' in proc.stdout
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  losses = [json.loads(l)['loss'] for l in lines if '"loss"' in l]
  assert len(losses) == 3 and all(np.isfinite(losses))


def test_cli_refuses_noncausal_expert_choice(tmp_path):
  proc = _cli('expert_choice.py:tiny', tmp_path,
              '--config.moe.causal_routing=False')
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'allow_noncausal=True' in lines[0], proc.stderr


@pytest.fixture(scope='module')
def mesh_results(tmp_path_factory):
  out = tmp_path_factory.mktemp('parallel_zoo')
  run_device_script(REPO / 'tests' / '_parallel_zoo.py', out, 8,
                    timeout=300, fast_compile=True)
  return out


@pytest.mark.parametrize('case', CASES)
def test_router_on_2x4x1_matches_one_device(mesh_results, case):
  one = dict(np.load(mesh_results / f'{case}_single.npz'))
  ep = dict(np.load(mesh_results / f'{case}_2x4x1.npz'))
  assert sorted(one) == sorted(ep)
  for key, want in one.items():
    np.testing.assert_allclose(ep[key], want, rtol=1e-5,
                               atol=1e-5 * float(np.max(np.abs(want))),
                               err_msg=f'{case}: {key}')


def test_mesh_refusal_is_one_line(mesh_results):
  refusals = json.loads((mesh_results / 'mesh_refusals.json').read_text())
  message = refusals['fine_grained_shared']
  assert '\n' not in message and 'num_experts=30' in message


def _switch_loss(probs, index, e):
  f = np.mean(np.eye(e)[index.reshape(-1)], axis=0)
  return e * np.sum(f * probs.reshape(-1, e).mean(0))


def test_balance_scopes_on_two_shards(mesh_results):
  """On a 2-shard mesh each scope is its formula, and the three differ."""
  s = dict(np.load(mesh_results / 'scopes.npz'))
  probs, index = s['probs'], s['index']
  e, g = probs.shape[-1], probs.shape[0]
  want = {
      'global': _switch_loss(probs, index, e),
      'micro_batch': np.mean([_switch_loss(probs[i:i + g // 2],
                                           index[i:i + g // 2], e)
                              for i in (0, g // 2)]),
      'sequence': np.mean([_switch_loss(probs[i], index[i], e)
                           for i in range(g)]),
  }
  for scope, value in want.items():
    np.testing.assert_allclose(s[scope], value, rtol=1e-5, err_msg=scope)
  assert len({round(float(s[k]), 5) for k in want}) == 3
