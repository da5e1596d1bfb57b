"""Checks of the config and workdir that must pass before the first write.

Each raises UserInputError with the flag that fixes it (moe_jax/errors.py's
helpers), so the CLI can print one line. The model and MoE sections are
checked by their own dataclasses (ModelConfig, MoEConfig); the mesh by
moe_jax.parallel.mesh.
"""

from __future__ import annotations

import math
import os
import pathlib

from moe_jax.errors import UserInputError, check_positive, require


def _fix(field: str) -> str:
  return f'set --config.{field}'


def check_train_config(config) -> None:
  t = config.train
  for name in ('num_steps', 'log_every', 'eval_every', 'eval_batches',
               'checkpoint_every', 'keep_checkpoints'):
    check_positive(f'train.{name}', t[name], fix=_fix(f'train.{name}'))
  value = t.peak_flops_per_device
  require(_is_number(value) and math.isfinite(value) and value >= 0,
          'train.peak_flops_per_device', value,
          'be a finite number >= 0 (0: from the device table)',
          _fix('train.peak_flops_per_device'))
  if t.upcycle and not t.init_from:
    raise UserInputError('train.upcycle=True needs the dense run to start '
                         'from; set --config.train.init_from=<its workdir>.')
  r = t.get('upcycle_drop_fraction', 0.0)
  require(_is_number(r) and 0 <= r <= 1, 'train.upcycle_drop_fraction', r,
          'be in [0, 1] (the share of each expert re-drawn; 0: naive '
          'upcycling)', _fix('train.upcycle_drop_fraction'))
  if r and not t.upcycle:
    raise UserInputError(
        f'train.upcycle_drop_fraction={r!r} re-draws part of each upcycled '
        'expert, but train.upcycle=False; set --config.train.upcycle=True '
        '(and train.init_from) or leave the fraction at 0.')


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_optim_config(config) -> None:
  """A NaN or non-positive learning rate would train nothing (or NaNs)."""
  o = config.optim
  # (field, test, what the value must be).
  rules = (
      ('learning_rate', lambda v: math.isfinite(v) and v > 0, 'finite and > 0'),
      ('warmup_steps', lambda v: isinstance(v, int) and v >= 0,
       'an int >= 0'),
      ('final_lr_fraction', lambda v: 0 <= v <= 1, 'in [0, 1]'),
      ('weight_decay', lambda v: math.isfinite(v) and v >= 0,
       'finite and >= 0'),
      ('b1', lambda v: 0 <= v < 1, 'in [0, 1)'),
      ('b2', lambda v: 0 <= v < 1, 'in [0, 1)'),
      ('grad_clip', lambda v: math.isfinite(v) and v > 0, 'finite and > 0'),
  )
  for name, ok, must in rules:
    value = o[name]
    # ok(...) rather than a negated comparison, so NaN fails too.
    require(_is_number(value) and ok(value), f'optim.{name}', value,
            f'be {must}', _fix(f'optim.{name}'))


def check_data_config(config) -> None:
  """A path only means something to kinds 'text', 'tokens' (and
  'tinyshakespeare').

  We refuse rather than guess: a path with the default kind='stdlib' would
  otherwise train on the standard library and ignore the user's file.
  """
  d = config.data
  if d.path and d.kind not in ('text', 'tokens', 'tinyshakespeare'):
    raise UserInputError(
        f'data.path={d.path!r} is set but data.kind={d.kind!r} ignores it; '
        'add --config.data.kind=text to train on that file or folder.')
  vocab = config.model.get('vocab_size', 256)
  # Byte data may hold any of the 256 byte values; a smaller vocabulary
  # would index past the embedding, which JAX clamps silently. Token ids
  # (a token file, a tokenizer) are checked against V once loaded, so a
  # small vocabulary such as nanoGPT's shakespeare_char (V = 65) works.
  if vocab < 256 and d.kind != 'tokens' and not d.tokenizer:
    raise UserInputError(
        f'model.vocab_size={vocab} is smaller than the 256 byte values the '
        f'data.kind={d.kind!r} data holds; set --config.model.vocab_size=256 '
        'or more.')
  # A .bin carries no dtype, and uint16 cannot hold the ids a vocabulary
  # over 65,536 has: such files are uint32 (e.g. Llama 3's 128,256), and
  # read as uint16 they would train on the halves of every id.
  max_id = {'uint8': 255, 'uint16': 65_535}.get(d.token_dtype)
  if (d.kind == 'tokens' and str(d.path or '').endswith('.bin') and
      max_id is not None and vocab > max_id + 1):
    raise UserInputError(
        f'model.vocab_size={vocab} has ids above {max_id:,}, which a '
        f'data.token_dtype={d.token_dtype!r} .bin file cannot hold; set '
        '--config.data.token_dtype=uint32 if the file was written so (a '
        '.npy file records its dtype).')


def check_workdir(workdir: pathlib.Path) -> None:
  """The workdir must be (or become) a directory we can write to."""
  if workdir.exists() and not workdir.is_dir():
    raise UserInputError(
        f'workdir {workdir} is a file, not a directory; pass a new '
        '--workdir.')
  # The deepest existing folder: the workdir, or the parent it will go in.
  existing = workdir
  while not existing.exists():
    existing = existing.parent
  if not existing.is_dir():
    raise UserInputError(
        f'workdir {workdir} cannot be created: {existing} is a file; pass '
        'another --workdir.')
  # Every folder a run writes into must be writable (checkpoints/ may have
  # been made read-only on its own).
  for path in (existing, workdir / 'checkpoints', workdir / 'tb'):
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
      raise UserInputError(
          f'{path} is not writable; fix its permissions or pass another '
          '--workdir.')
