"""A mesh that cannot hold the model or batch fails fast, in one line.

The CLI runs in a subprocess with 8 CPU devices (the rest of the suite has
one, fixed when JAX starts). JAX_LOG_COMPILES=1 makes JAX log every trace
and compile to stderr, so "exactly one stderr line" also proves the error
came before anything was traced or compiled.
"""

import pathlib
import subprocess
import sys

import pytest
from testlib import multi_device_env

REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_DEVICES = 8

pytestmark = pytest.mark.slow


def _env(num_devices):
  # JAX_LOG_COMPILES makes any tracing or compiling show up on stderr, so the
  # one-line check also proves the error came before compiling.
  return dict(multi_device_env(num_devices), JAX_LOG_COMPILES='1')


# Flags of each bad mesh, and words its error line must contain.
CASES = {
    'mesh_does_not_match_device_count': (
        ['--config.mesh.shape=(2,2,1)'],
        ['mesh shape (2, 2, 1)', 'needs 4 devices', '8 are available']),
    'experts_not_divisible_by_expert_axis': (
        ['--config.mesh.shape=(2,4,1)', '--config.moe.num_experts=6',
         '--config.batch_size=8'],
        ['num_experts=6', 'expert axis (4)']),
    'batch_not_divisible_by_data_times_expert': (
        ['--config.mesh.shape=(2,4,1)', '--config.batch_size=4'],
        ['batch_size=4', 'data × expert', '(8)']),
    # 8 sequences of 32 bytes in groups of 128 tokens: 2 groups for 8 shards.
    'groups_not_divisible_by_data_times_expert': (
        ['--config.mesh.shape=(2,4,1)', '--config.batch_size=8',
         '--config.moe.group_size=128'],
        ['2 routing groups', 'group_size', 'data × expert axes (8)']),
    # FSDP splits D over data: 36 over 8 would leave uneven (padded) shards.
    'fsdp_d_model_not_divisible_by_data': (
        ['--config.mesh.shape=(8,1,1)', '--config.mesh.fsdp=True',
         '--config.model.d_model=36', '--config.batch_size=8'],
        ['mesh.fsdp=True', 'd_model=36', 'data axis (8)',
         '--config.mesh.fsdp=False']),
}


@pytest.mark.parametrize('case', list(CASES))
def test_bad_mesh_fails_before_compiling(case, tmp_path):
  flags, needles = CASES[case]
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, '-m', 'moe_jax.main',
       '--config=configs/switch_top1.py:tiny', f'--workdir={workdir}', *flags],
      cwd=REPO, env=_env(NUM_DEVICES), capture_output=True, text=True,
      timeout=120)
  assert result.returncode != 0
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr  # No traceback, no trace or compile.
  assert lines[0].startswith('error: '), lines[0]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  assert 'model:' not in result.stdout  # The model was never built.
  assert not workdir.exists()  # Nothing was written.
