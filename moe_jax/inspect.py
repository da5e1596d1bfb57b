"""What a model costs, without allocating it.

  python -m moe_jax.inspect --config=configs/presets/mixtral_8x7b.py --mesh=data:8,expert:8
  python -m moe_jax.inspect --markdown --mesh=data:8,expert:8 configs/presets/*.py
  python -m moe_jax.inspect --config=configs/presets/mixtral_8x7b.py --mesh=data:8,expert:8 --fsdp

Prints total and active (per-token) parameters, weight memory in fp32 /
bf16 / int8, what one device of the mesh holds (fp32 weights and Adam's two
fp32 moments, sharded by moe_jax/parallel/rules.py; with --fsdp, or a config
whose mesh.fsdp is True, also split over the data axis), and training FLOPs per
token (moe_jax/models/flops.py: 6 × active matmul parameters plus attention
at the config's seq_len, the count the trainer's MFU uses). `--markdown` prints one table row per config file given
as an argument (`path.py` or `path.py:arg`), for the README.
"""

from __future__ import annotations

import importlib.util
import pathlib

from absl import app, flags
from ml_collections import config_flags

from moe_jax import cli
from moe_jax.errors import UserInputError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally with :arg.', lock_config=True)
_MESH = flags.DEFINE_string(
    'mesh', 'data:1', 'Mesh to size one device for, as AXIS:SIZE pairs over '
    'data, expert and model (e.g. data:8,expert:8); unnamed axes are 1.')
_FSDP = flags.DEFINE_bool(
    'fsdp', None, 'Size the devices with fully sharded data parallelism '
    '(weights and Adam moments split over data too); default: each '
    "config's mesh.fsdp.")
_MARKDOWN = flags.DEFINE_bool(
    'markdown', False, 'Print a Markdown table row per config file argument.')

GIB = 2 ** 30
_HEADER = ('| preset | total params | active / token | fp32 | bf16 | int8 | '
           'per device: weights fp32 + Adam (2× fp32) | train FLOPs / token |\n'
           '|---|---|---|---|---|---|---|---|')


def _billions(n: int) -> str:
  return f'{n / 1e9:.2f}B' if n >= 1e8 else f'{n / 1e6:.2f}M'


def _gib(n: int) -> str:
  return f'{n / GIB:,.1f} GiB' if n >= GIB / 10 else f'{n / 2**20:,.1f} MiB'


def describe(name: str, cost) -> str:
  mesh = ','.join(f'{a}:{s}' for a, s in zip(cost.mesh.axis_names,
                                              cost.mesh.axis_sizes))
  return '\n'.join([
      f'{name}',
      f'  params          total {cost.total:,} ({_billions(cost.total)}), '
      f'active/token {cost.active:,} ({_billions(cost.active)})',
      '  weights         ' + ', '.join(
          f'{d} {_gib(cost.weight_bytes(d))}' for d in ('fp32', 'bf16', 'int8')),
      f'  per device      mesh {mesh} ({cost.mesh.num_devices} devices'
      f'{", FSDP over data" if cost.fsdp else ""}): '
      f'{cost.device_params:,} params; weights fp32 '
      f'{_gib(cost.device_weight_bytes)} + Adam moments '
      f'{_gib(cost.device_adam_bytes)} = '
      f'{_gib(cost.device_weight_bytes + cost.device_adam_bytes)}',
      f'  train FLOPs     {cost.train_flops_per_token:.3e} per token '
      '(6 × active matmul params + attention over the sequence; '
      'moe_jax/models/flops.py)',
  ])


def markdown_row(name: str, cost) -> str:
  per_device = cost.device_weight_bytes + cost.device_adam_bytes
  return (f'| {name} | {_billions(cost.total)} | {_billions(cost.active)} | '
          f'{_gib(cost.weight_bytes("fp32"))} | '
          f'{_gib(cost.weight_bytes("bf16"))} | '
          f'{_gib(cost.weight_bytes("int8"))} | {_gib(per_device)} | '
          f'{cost.train_flops_per_token:.2e} |')


def load_config_file(spec: str):
  """'configs/x.py[:arg]' -> its get_config(arg), like --config does."""
  path, _, arg = spec.partition(':')
  if not pathlib.Path(path).is_file():
    raise UserInputError(f'config file {path} does not exist; pass '
                         'configs/presets/<name>.py from the repository root.')
  module_spec = importlib.util.spec_from_file_location('_config', path)
  module = importlib.util.module_from_spec(module_spec)
  try:
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)
  except (ImportError, UserInputError) as e:  # Name the file in the line.
    raise UserInputError(f'{path}: {e}') from e


def _fsdp(config) -> bool:
  """--fsdp if given, else the config's own mesh.fsdp."""
  return config.mesh.fsdp if _FSDP.value is None else _FSDP.value


def main(argv) -> None:
  from moe_jax.models import accounting  # pylint: disable=g-import-not-at-top
  from moe_jax.train.setup import model_config  # pylint: disable=g-import-not-at-top
  try:
    mesh = accounting.parse_mesh(_MESH.value)
    if _MARKDOWN.value:
      if len(argv) < 2:
        cli.fail('--markdown needs config files as arguments, e.g. '
                 'configs/presets/*.py.')
      fsdp = ', FSDP over data' if _FSDP.value else ''
      print(f'Mesh {_MESH.value}{fsdp}.\n\n{_HEADER}')
      for spec in argv[1:]:
        config = load_config_file(spec)
        cost = accounting.model_cost(model_config(config), mesh,
                                     config.seq_len, _fsdp(config))
        print(markdown_row(pathlib.Path(spec).stem, cost), flush=True)
      return
    if _CONFIG.value is None or len(argv) > 1:
      cli.fail('pass one --config=configs/presets/<name>.py (or --markdown '
               'with config files as arguments).')
    cost = accounting.model_cost(model_config(_CONFIG.value), mesh,
                                 _CONFIG.value.seq_len, _fsdp(_CONFIG.value))
    print(describe(flags.FLAGS['config'].config_filename, cost))
  except UserInputError as e:
    cli.fail(str(e))


if __name__ == '__main__':
  app.run(main, flags_parser=lambda argv: cli.parse_flags(argv, _CONFIG))
