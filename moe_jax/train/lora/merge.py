"""Folds a LoRA run's adapters into its base: an ordinary checkpoint.

  python -m moe_jax.train.lora_merge --workdir=runs/lora --out=runs/merged

(`moe_jax/train/lora_merge.py` keeps that documented command; this module
runs as `python -m moe_jax.train.lora.merge` too.)

The LoRA run's latest checkpoint holds the adapters, and its meta names the
base run and step. The result in `--out` is a checkpoint of the full model
(W + (α/r)·A·B at every adapted weight, every other weight the base's, bit
for bit) at the LoRA run's step, with fresh optimizer state, and its config
is the LoRA run's with `lora.rank=0` and no `train.init_from`. Evaluate it
or train on from it like any run (`moe_jax/train/evaluate.py`, or
`train.init_from=<out>`).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import ml_collections

from moe_jax.errors import UserInputError


def merged_config(config: dict) -> ml_collections.ConfigDict:
  """The LoRA run's config as that of a plain run of the merged model."""
  from moe_jax.config import renames  # pylint: disable=g-import-not-at-top
  from moe_jax.config.default_config import get_default_config  # pylint: disable=g-import-not-at-top
  c = ml_collections.ConfigDict(renames.translate_nested(config))
  c.lora = get_default_config().lora  # Off; alpha and targets mean nothing.
  c.train.init_from = None
  c.train.upcycle = False
  return c


def merge_run(workdir: str, out: str) -> pathlib.Path:
  """Writes the merged checkpoint of `workdir` into `out`; returns its folder.

  Raises:
    UserInputError: `workdir` holds no LoRA checkpoint, its base checkpoint
      is gone, or `out` already holds a checkpoint (never overwritten).
  """
  # Imported here so `--help` and argument errors stay fast.
  from moe_jax.parallel import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  from moe_jax.train import checkpoint, init_from, saved_config, setup  # pylint: disable=g-import-not-at-top
  from moe_jax.train.lora import adapters, run  # pylint: disable=g-import-not-at-top

  if checkpoint.has_checkpoint(out):
    raise UserInputError(f'{out} already holds a checkpoint; pass a new --out')
  step, state, meta = checkpoint.read(workdir, flag='--workdir')
  base = (meta or {}).get('lora_base')
  if not base:
    raise UserInputError(f'{workdir} is not a LoRA run (its checkpoint names '
                         'no base); pass the --workdir of a lora.rank > 0 run')
  config = saved_config.saved_config(meta['config'])
  _, params = init_from.read_params(base['workdir'], base['step'])
  merged = adapters.merge(params, state['params'], run.scale(config))
  plain = merged_config(meta['config'])
  mcfg = setup.model_config(plain)
  # Any mesh will do: a checkpoint restores onto any mesh.
  mesh = mesh_lib.make_mesh((-1, 1, 1))
  _, fresh, _, _ = setup.init_state(mcfg, plain, mesh)
  # Loss-free biases kept moving during LoRA: its router states carry over.
  routers = {name: init_from.fill(s, init_from.flatten(state[name]), workdir)
             for name, s in fresh.router_states().items()}
  fresh = fresh.replace(params=init_from.fill(fresh.params, merged, workdir),
                        step=fresh.step + step, **routers)
  ckpt = checkpoint.Checkpointer(out, plain.train.keep_checkpoints)
  try:
    # The data fingerprint carries over: resuming the merged run on other
    # data is refused as it would be for the LoRA run.
    ckpt.save(step, fresh, {'config': plain.to_dict(), 'data': meta.get('data'),
                            'merged_from': {
        'lora': str(pathlib.Path(workdir).absolute()), 'lora_step': step,
        'base': base}})
  finally:
    ckpt.close()
  return ckpt.directory / str(step)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m moe_jax.train.lora_merge',
      description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='the LoRA run')
  parser.add_argument('--out', required=True, help='a new workdir')
  args = parser.parse_args(argv)
  try:
    path = merge_run(args.workdir, args.out)
  except UserInputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'merged checkpoint: {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
