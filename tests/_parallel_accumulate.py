"""Gradient accumulation's train steps, with and without a mesh of 8 CPU
devices, and a run resumed with accumulation.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python tests/_parallel_accumulate.py OUT_DIR

test_parallel_accumulate.py runs this once and checks what it writes. The
steps are benchmarks/accumulation.py's (one SGD(1) step of each router's
tiny config, batch 32 of random bytes; see its docstring). Under OUT_DIR:

  <router>_1.npz        N = 1, one device, no mesh ('grad/...', 'router/...'
                        and the step's metrics).
  <router>_4.npz        N = 4, the same.
  <router>_4_mesh.npz   N = 4 on mesh (2, 4, 1) (not for 'lora').
  run/, resumed/        sigmoid + bias trained for 4 steps on (2, 4, 1) with
                        N = 1; resumed/ is run/ stopped after its step-2
                        checkpoint and resumed with N = 4
                        (resumed/stdout.txt).
  run_final.npz, resumed_final.npz   their last TrainStates (one device).
"""

import contextlib
import io
import pathlib
import shutil
import sys

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# pylint: disable=g-import-not-at-top,wrong-import-position
import testlib  # tests/ is sys.path[0] for scripts.
from benchmarks import accumulation
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.train import trainer

N = 4
RESUME_STEPS = 4


def steps(out: pathlib.Path) -> None:
  mesh = mesh_lib.make_mesh((2, 4, 1))
  for name in accumulation.ROUTERS:
    runs = {'4': (N, None)}
    if name != 'lora':  # Its adapters are made on one device.
      runs['4_mesh'] = (N, mesh)
    if name != 'micro_batch':  # Its N = 1 is switch's (no mesh: one pool).
      runs['1'] = (1, None)
    for suffix, (n, on) in runs.items():
      np.savez(out / f'{name}_{suffix}.npz',
               **accumulation.one_step(accumulation.config_for(name, n), on)[0])


def _train(config, workdir: pathlib.Path) -> str:
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    trainer.train_and_evaluate(config, str(workdir))
  return stdout.getvalue()


def _final(workdir, config) -> dict[str, np.ndarray]:
  mesh = mesh_lib.make_mesh((2, 4, 1))
  state, _ = testlib.restore_latest(workdir, config, mesh)
  return {jax.tree_util.keystr(p, simple=True, separator='/'):
          np.asarray(jax.device_get(v))
          for p, v in jax.tree.leaves_with_path(state)}


def resume(out: pathlib.Path) -> None:
  """run/ with N = 1; resumed/ from its half-way checkpoint with N = 4."""
  def config(n):
    c = accumulation.config_for('sigmoid_bias', n)
    c.update_from_flattened_dict({
        'train.num_steps': RESUME_STEPS, 'train.log_every': 1,
        'train.eval_every': RESUME_STEPS,
        'train.checkpoint_every': RESUME_STEPS // 2,
        'train.final_eval_batches': 2, 'mesh.shape': (2, 4, 1)})
    return c

  run, resumed = out / 'run', out / 'resumed'
  _train(config(1), run)
  shutil.copytree(run, resumed)
  shutil.rmtree(resumed / 'checkpoints' / str(RESUME_STEPS))
  (resumed / 'stdout.txt').write_text(_train(config(N), resumed))
  np.savez(out / 'run_final.npz', **_final(run, config(1)))
  np.savez(out / 'resumed_final.npz', **_final(resumed, config(N)))


def main(out_dir: str) -> None:
  testlib.require_devices(8)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  steps(out)
  resume(out)


if __name__ == '__main__':
  main(sys.argv[1])
