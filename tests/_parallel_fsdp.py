"""Fully sharded data parallelism (mesh.fsdp=True) on 8 CPU devices.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
      python tests/_parallel_fsdp.py OUT_DIR

test_parallel_fsdp.py runs this once and checks what it writes. Each case
is the tiny switch config with batch 8, run by the trainer's own pieces
(setup.init_state, its jitted step). Under OUT_DIR:

  steps_<case>.npz    parameters after STEPS steps and each step's loss,
                      for CASES: FSDP on (8,1,1) with the index dispatcher
                      and on (2,4,1) with the dropless one (expert-parallel
                      exchange of the routed rows), each beside one device.
  hlo_<case>.txt      the compiled step of each FSDP case.
  restored_<case>.npz every leaf of a TrainState restored across the rule:
                      'off_from_on' (saved by the FSDP (2,4,1) run, restored
                      with the rule off on (2,4,1)), 'on_from_off' (that
                      state saved again, restored with the rule on on
                      (8,1,1)), and 'saved' (what was saved first).
  report.json         per-device bytes of parameters and Adam moments,
                      measured from the arrays' shards, with the rule off
                      and on per mesh; what moe_jax.inspect's accounting
                      predicts; where the restored arrays live.
"""

import json
import pathlib
import shutil
import sys
import tempfile

import jax
import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
# pylint: disable=g-import-not-at-top,wrong-import-position
import testlib  # tests/ is sys.path[0] for scripts.
from testlib import require_devices
from configs import switch_top1
from moe_jax.models import accounting
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import placement
from moe_jax.train import setup, trainable
from moe_jax.train.checkpoint import Checkpointer

NUM_DEVICES = 8
STEPS = 3  # The first step's learning rate is 0; two real updates follow.
# name: (mesh shape, fsdp, dispatcher). Each FSDP case is compared with the
# one-device case of its dispatcher.
CASES = {
    'single_index': ((1, 1, 1), False, 'index'),
    'fsdp_8x1x1_index': ((8, 1, 1), True, 'index'),
    'single_dropless': ((1, 1, 1), False, 'dropless'),
    'fsdp_2x4x1_dropless': ((2, 4, 1), True, 'dropless'),
}
# Per-device memory: mesh -> the FSDP case whose state is measured.
MEMORY_CASES = {'8x1x1': 'fsdp_8x1x1_index', '2x4x1': 'fsdp_2x4x1_dropless'}


def tiny_config(shape, fsdp: bool, dispatcher: str = 'index'):
  config = switch_top1.get_config('tiny')
  config.batch_size = 8  # Splits over data × expert = 8.
  config.train.num_steps = 8
  config.mesh.shape = tuple(shape)
  config.mesh.fsdp = fsdp
  config.moe.dispatcher = dispatcher
  config.lock()
  return config


def flat(tree, prefix: str = '') -> dict[str, np.ndarray]:
  return {prefix + jax.tree_util.keystr(path, simple=True, separator='/'):
          np.asarray(jax.device_get(leaf))
          for path, leaf in jax.tree.leaves_with_path(tree)}


def build(config):
  """(mesh, graphdef, state, shardings, tx, batches) as the trainer builds
  them (one device for a (1,1,1) mesh)."""
  mcfg = setup.model_config(config)
  if tuple(config.mesh.shape) == (1, 1, 1):
    mesh = mesh_lib.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  else:
    mesh = setup.make_mesh(config, mcfg)
  graphdef, state, shardings, tx = setup.init_state(mcfg, config, mesh)
  return mesh, graphdef, state, shardings, tx, setup.load_data(config).batches


def run_case(name: str, out: pathlib.Path):
  """STEPS steps of the trainer's jitted step; returns the final state."""
  shape, fsdp, dispatcher = CASES[name]
  config = tiny_config(shape, fsdp, dispatcher)
  mesh, graphdef, state, shardings, tx, batches = build(config)
  batch_sh = placement.batch_shardings(mesh, batches.batch_at(0))
  step_fn = trainable.FullModel(config, setup.model_config(config),
                                read_init_from=False).step_fn(
                                    graphdef, tx, shardings, batch_sh, mesh)
  losses = []
  with jax.set_mesh(mesh):
    if fsdp:
      batch = placement.shard_batch(batches.batch_at(0), batch_sh)
      (out / f'hlo_{name}.txt').write_text(
          step_fn.lower(state, batch).compile().as_text())
    for step in range(STEPS):
      batch = placement.shard_batch(batches.batch_at(step), batch_sh)
      state, metrics = step_fn(state, batch)
      losses.append(np.asarray(metrics['loss']))
  np.savez(out / f'steps_{name}.npz', loss=np.stack(losses),
           **flat(state.params, 'final/'))
  return state


def memory(state, config) -> dict:
  mcfg = setup.model_config(config)
  shape = accounting.MeshShape(mesh_lib.AXES, tuple(config.mesh.shape))
  predicted = accounting.model_cost(mcfg, shape, fsdp=config.mesh.fsdp)
  return {'params': placement.device_bytes(state.params),
          'moments': placement.device_bytes(state.opt_state),
          'predicted_params': predicted.device_weight_bytes,
          'predicted_moments': predicted.device_adam_bytes}


def placement_report(tree, shardings) -> dict:
  return {jax.tree_util.keystr(path, simple=True, separator='/'): {
      'shape': list(leaf.shape),
      'sharding_matches': leaf.sharding == want,
      'total': int(leaf.nbytes),
      'per_device': int(leaf.addressable_shards[0].data.nbytes)}
          for (path, leaf), want in zip(jax.tree.leaves_with_path(tree),
                                        jax.tree.leaves(shardings))}


def restore(workdir, config):
  """The state saved in `workdir`, restored onto `config`'s placement."""
  mesh = setup.make_mesh(config, setup.model_config(config))
  return testlib.restore_latest(workdir, config, mesh)


def save(workdir, state) -> None:
  ckpt = Checkpointer(workdir, keep=1)
  ckpt.save(STEPS, state, {})
  ckpt.close()


def main(out_dir: str) -> None:
  require_devices(NUM_DEVICES)
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  report = {'memory': {}, 'restored': {}}
  finals = {name: run_case(name, out) for name in CASES}

  for mesh_name, case in MEMORY_CASES.items():
    shape, _, dispatcher = CASES[case]
    off = tiny_config(shape, False, dispatcher)
    report['memory'][f'{mesh_name}_off'] = memory(build(off)[2], off)
    report['memory'][f'{mesh_name}_on'] = memory(
        finals[case], tiny_config(shape, True, dispatcher))

  # Saved with the rule on, restored with it off; then the other way.
  saved = finals['fsdp_2x4x1_dropless']
  np.savez(out / 'restored_saved.npz', **flat(saved))
  tmp = pathlib.Path(tempfile.mkdtemp(dir=out))
  save(tmp / 'on', saved)
  off, off_sh = restore(tmp / 'on', tiny_config((2, 4, 1), False))
  np.savez(out / 'restored_off_from_on.npz', **flat(off))
  report['restored']['off_from_on'] = placement_report(off, off_sh)
  save(tmp / 'off', off)
  on, on_sh = restore(tmp / 'off', tiny_config((8, 1, 1), True))
  np.savez(out / 'restored_on_from_off.npz', **flat(on))
  report['restored']['on_from_off'] = placement_report(on, on_sh)
  shutil.rmtree(tmp)
  (out / 'report.json').write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
  main(sys.argv[1])
