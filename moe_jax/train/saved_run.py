"""The config a training workdir's latest checkpoint was written with."""

from __future__ import annotations

import pathlib

from moe_jax.errors import UserInputError
from moe_jax.train import checkpoint, saved_config


def latest_config(workdir: str | pathlib.Path):
  """(step, ConfigDict) of the workdir's latest readable checkpoint.

  Old field names are translated (saved_config.py). A workdir with
  no checkpoints folder, or none that reads, is a one-line UserInputError.
  """
  if not (pathlib.Path(workdir) / 'checkpoints').is_dir():
    raise UserInputError(f'{workdir} holds no checkpoints folder; pass the '
                         '--workdir of a training run')
  ckpt = checkpoint.Checkpointer(workdir, keep=1)
  try:
    found = ckpt.latest_meta()
  finally:
    ckpt.close()
  if found is None:
    raise UserInputError(f'no checkpoint in {workdir} can be read; pass the '
                         '--workdir of a training run')
  step, meta = found
  return step, saved_config.saved_config(meta['config'])
