"""Per-device memory of a train state with FSDP off and on, on 8 host devices.

  python benchmarks/fsdp_memory.py [--config=configs/switch_top1.py] \
      [--out=runs/benchmarks/fsdp_memory.json]

For each mesh (8,1,1) and (2,4,1), with mesh.fsdp False and True, places
the config's train state as the trainer does (setup.init_state) and reports
what one device holds, read from the arrays' shards (the most any device
holds, arrays of rank >= 1):
  params_MiB     the weights;
  adam_MiB       Adam's two moments;
  vs_off         (params + adam) with the rule off / with this row's rule;
  inspect_ok     whether moe_jax.inspect's accounting predicts both exactly;
  step_arg_MiB, step_temp_MiB
                 XLA's memory analysis of the compiled train step per device:
                 its inputs (state and batch), and the temporaries it needs
                 (activations, gradients, and under FSDP the gathered
                 weights).
Nothing is timed: the numbers are the same on any machine.
"""

from __future__ import annotations

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import argparse  # pylint: disable=g-import-not-at-top,g-bad-import-order
import importlib.util
import pathlib
import sys

import jax

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common
from moe_jax.models import accounting
from moe_jax.parallel import mesh as mesh_lib
from moe_jax.parallel import placement
from moe_jax.train import setup, trainable

MESHES = [(8, 1, 1), (2, 4, 1)]
MIB = 2 ** 20


def load_config(path: str, shape, fsdp: bool):
  spec = importlib.util.spec_from_file_location('bench_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.mesh.shape = shape
  config.mesh.fsdp = fsdp
  config.batch_size = max(config.batch_size, 8)  # Splits over 8 devices.
  return config


def measure(config) -> dict:
  mcfg = setup.model_config(config)
  mesh = setup.make_mesh(config, mcfg)
  graphdef, state, shardings, tx = setup.init_state(mcfg, config, mesh)
  params = placement.device_bytes(state.params)
  adam = placement.device_bytes(state.opt_state)
  cost = accounting.model_cost(
      mcfg, accounting.MeshShape(mesh_lib.AXES, tuple(config.mesh.shape)),
      fsdp=config.mesh.fsdp)
  batch = setup.load_data(config).batches.batch_at(0)
  batch_sh = placement.batch_shardings(mesh, batch)
  step = trainable.FullModel(config, mcfg, read_init_from=False).step_fn(
      graphdef, tx, shardings, batch_sh, mesh)
  with jax.set_mesh(mesh):
    analysis = step.lower(state, placement.shard_batch(
        batch, batch_sh)).compile().memory_analysis()
  return {'mesh': str(tuple(config.mesh.shape)), 'fsdp': config.mesh.fsdp,
          'state_bytes': params + adam,
          'params_MiB': round(params / MIB, 3),
          'adam_MiB': round(adam / MIB, 3),
          'inspect_ok': (params == cost.device_weight_bytes and
                         adam == cost.device_adam_bytes),
          'step_arg_MiB': round(analysis.argument_size_in_bytes / MIB, 3),
          'step_temp_MiB': round(analysis.temp_size_in_bytes / MIB, 3)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--config', default='configs/switch_top1.py')
  parser.add_argument('--out', default=common.default_out('fsdp_memory'))
  args = parser.parse_args()
  rows = []
  for shape in MESHES:
    off = measure(load_config(args.config, shape, False))
    on = measure(load_config(args.config, shape, True))
    for row in (off, on):
      row['vs_off'] = round(off['state_bytes'] / row['state_bytes'], 3)
      rows.append(row)
  print(f'{args.config} on {jax.device_count()} {jax.default_backend()} '
        'devices, per device:')
  common.print_table(rows, ['mesh', 'fsdp', 'params_MiB', 'adam_MiB',
                            'vs_off', 'inspect_ok', 'step_arg_MiB',
                            'step_temp_MiB'])
  common.write_json(args.out, {'config': args.config, 'rows': rows})


if __name__ == '__main__':
  main()
