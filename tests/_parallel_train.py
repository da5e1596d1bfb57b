"""Training steps and checkpoints across meshes of 8 CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python tests/_parallel_train.py OUT_DIR

test_parallel_train.py runs this once and checks what it writes. Every part
uses the tiny switch config with batch_size 8, placed the way the trainer
places it (setup.init_state, placement.*). Under OUT_DIR:

  step_<mesh>.npz       'single' (a 1-device mesh) and '2x4x1': parameters at
                        init and after STEPS train_step calls, and the loss
                        of each step ('init/...', 'final/...', 'loss').
  run/                  workdir of train_and_evaluate on (2,4,1) for
                        TRAIN_STEPS steps, checkpointed half-way and at the
                        end.
  restored_<mesh>.npz   every leaf of the TrainState restored from run/'s
                        last checkpoint onto the shardings of mesh '2x4x1',
                        '1x1x1' and '4x2x1'.
  resumed/              run/ without its last checkpoint (as if killed after
                        the half-way one), resumed with mesh (4,2,1); its
                        stdout is resumed/stdout.txt.
  resumed_final.npz     resumed/'s last TrainState (on one device).
  report.json           where restored arrays live (devices, bytes/device).

A persistent compilation cache private to this run lets programs that come
back (the trainer's step after the same step compiled here, init on a mesh
seen before) load instead of compiling again; it changes no result.
"""

import contextlib
import functools
import io
import json
import pathlib
import shutil
import sys

import jax
import numpy as np

# Run as a script, the checkout is not on the path the way pytest puts it.
REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# pylint: disable=g-import-not-at-top,wrong-import-position
import testlib  # tests/ is sys.path[0] for scripts.
from testlib import require_devices
from configs import switch_top1
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import placement
from moe_jax.train import setup, trainer
from moe_jax.train.step import train_step

NUM_DEVICES = 8
STEPS = 2  # train_step calls compared; the first one's learning rate is 0.
TRAIN_STEPS = 8  # train_and_evaluate steps; a checkpoint every half.


def tiny_config(mesh_shape=(-1, 1, 1)):
  config = switch_top1.get_config('tiny')
  config.batch_size = 8  # Splits over data × expert = 8.
  # Fixed: the learning-rate schedule depends on it, and equal programs
  # come back from the compilation cache.
  config.train.num_steps = TRAIN_STEPS
  config.train.log_every = 1
  config.train.eval_every = TRAIN_STEPS // 2
  config.train.checkpoint_every = TRAIN_STEPS // 2
  config.mesh.shape = tuple(mesh_shape)
  config.lock()
  return config


def meshes():
  return {
      'single': mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1]),
      '1x1x1': mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1]),
      '2x4x1': mesh_lib.make_mesh((2, 4, 1)),
      '4x2x1': mesh_lib.make_mesh((4, 2, 1)),
  }


def flat(tree, prefix: str = '') -> dict[str, np.ndarray]:
  """{'params/layers/0/...': host array} for every leaf of `tree`."""
  return {prefix + jax.tree_util.keystr(path, simple=True, separator='/'):
          np.asarray(jax.device_get(leaf))
          for path, leaf in jax.tree.leaves_with_path(tree)}


def train_steps(mesh, out: pathlib.Path, name: str) -> None:
  """STEPS jitted train_step calls on `mesh`, jitted as the trainer does."""
  config = tiny_config()
  mcfg = setup.model_config(config)
  batches = setup.load_data(config).batches
  graphdef, state, shardings, tx = setup.init_state(mcfg, config, mesh)
  batch_sh = placement.batch_shardings(mesh, batches.batch_at(0))
  step_fn = jax.jit(functools.partial(train_step, graphdef=graphdef, tx=tx),
                    in_shardings=(shardings, batch_sh),
                    out_shardings=(shardings, placement.replicated(mesh)),
                    donate_argnums=0)
  record = flat(state.params, 'init/')  # Before donation frees the buffers.
  losses = []
  for step in range(STEPS):
    batch = placement.shard_batch(batches.batch_at(step), batch_sh)
    with jax.set_mesh(mesh):
      state, metrics = step_fn(state, batch)
    losses.append(np.asarray(metrics['loss']))
  record.update(flat(state.params, 'final/'))
  record['loss'] = np.stack(losses)
  np.savez(out / f'step_{name}.npz', **record)


def _train(config, workdir: pathlib.Path) -> str:
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    trainer.train_and_evaluate(config, str(workdir))
  return stdout.getvalue()


def _restore(workdir, mesh, config):
  """The latest TrainState in `workdir`, placed as init_state places it."""
  return testlib.restore_latest(workdir, config, mesh)


def _placement_report(tree, shardings, mesh) -> dict:
  leaves = {}
  for (path, leaf), want in zip(jax.tree.leaves_with_path(tree),
                                jax.tree.leaves(shardings)):
    leaves[jax.tree_util.keystr(path, simple=True, separator='/')] = {
        'shape': list(leaf.shape),
        'devices': len(leaf.sharding.device_set),
        'sharding_matches': leaf.sharding == want,
        'total': int(leaf.nbytes),
        'per_device': int(leaf.addressable_shards[0].data.nbytes)}
  return {'mesh_devices': int(mesh.devices.size), 'leaves': leaves}


def checkpoints(all_meshes, out: pathlib.Path, report: dict) -> None:
  """Train on (2,4,1), restore on three meshes, resume on (4,2,1)."""
  config = tiny_config((2, 4, 1))
  run = out / 'run'
  _train(config, run)

  for name in ('2x4x1', '1x1x1', '4x2x1'):
    mesh = all_meshes[name]
    restored, shardings = _restore(run, mesh, config)
    np.savez(out / f'restored_{name}.npz', **flat(restored))
    report[f'restored_{name}'] = _placement_report(restored, shardings, mesh)

  # The same run stopped after the half-way checkpoint (as if killed), then
  # resumed with mesh (4,2,1). Only the mesh differs from the reference, so
  # the learning-rate schedule and data order are the same.
  resumed = out / 'resumed'
  shutil.copytree(run, resumed)
  shutil.rmtree(resumed / 'checkpoints' / str(TRAIN_STEPS))
  config = tiny_config((4, 2, 1))
  (resumed / 'stdout.txt').write_text(_train(config, resumed))
  final, _ = _restore(resumed, all_meshes['1x1x1'], config)
  np.savez(out / 'resumed_final.npz', **flat(final))


def main(out_dir: str) -> None:
  require_devices(NUM_DEVICES)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  cache = testlib.private_compilation_cache(out)
  all_meshes = meshes()
  report = {}
  for name in ('single', '2x4x1'):
    train_steps(all_meshes[name], out, name)
  checkpoints(all_meshes, out, report)
  (out / 'report.json').write_text(json.dumps(report, indent=1))
  shutil.rmtree(cache)


if __name__ == '__main__':
  main(sys.argv[1])
