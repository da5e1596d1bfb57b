"""Pre-tokenized token files, memory-mapped: nanoGPT's flat `.bin` and `.npy`.

A token file is a flat array of token ids with nothing else in it: nanoGPT's
`prepare.py` writes `.bin` files of uint16 ids (`arr.tofile(...)`), and
`np.save` writes `.npy` files whose header carries the dtype. Both are
memory-mapped, so a corpus larger than memory trains: a batch reads only the
windows it gathers.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from moe_jax.errors import UserInputError

# Unsigned ids: uint16 holds vocabularies up to 65,536 (GPT-2's 50,257),
# uint32 anything larger (Llama 3's 128,256).
TOKEN_DTYPES = ('uint8', 'uint16', 'uint32')
TOKEN_SUFFIXES = ('.npy', '.bin')

# Ids are checked against V in chunks of this many, so the check of a
# file larger than memory reads it once without loading it whole.
_CHECK_CHUNK = 1 << 24
# How many leading ids of a .bin file are looked at for the dtype check.
_DTYPE_SAMPLE = 1 << 20
# Fewer ids than this prove nothing about the dtype either way.
_DTYPE_MIN_SAMPLE = 64


def read_token_file(path: str | os.PathLike,
                    dtype: str = 'uint16') -> np.ndarray:
  """Memory-maps a flat token file.

  Args:
    path: a `.npy` file (its header gives the dtype) or a raw `.bin` file.
    dtype: the dtype of a `.bin` file, one of TOKEN_DTYPES; a `.npy` file's
      own dtype is used instead.

  Returns:
    A read-only memory-mapped 1-D array of ids [N], N >= 1.

  Raises:
    UserInputError: the file is missing, has another suffix, is empty, or
      does not hold 1-D unsigned ids of a TOKEN_DTYPES dtype.
  """
  p = pathlib.Path(path).expanduser()
  fix = ('set --config.data.path to a .npy or .bin file of token ids')
  if not p.is_file():
    raise UserInputError(f"token file '{path}' does not exist; {fix}")
  if p.suffix not in TOKEN_SUFFIXES:
    raise UserInputError(
        f"token file '{path}' ends in {p.suffix!r}, not .npy or .bin; {fix}")
  if p.suffix == '.npy':
    try:
      tokens = np.load(p, mmap_mode='r', allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      raise UserInputError(
          f"token file '{path}' is not a readable .npy file ({e}); write it "
          'with np.save(path, ids.astype(np.uint16))') from e
    if tokens.dtype.name not in TOKEN_DTYPES or tokens.ndim != 1:
      raise UserInputError(
          f"token file '{path}' holds {tokens.dtype} {tokens.shape}, not 1-D "
          f"ids of {'/'.join(TOKEN_DTYPES)}; save it as "
          'ids.reshape(-1).astype(np.uint16) (uint32 for V > 65536)')
  else:
    if dtype not in TOKEN_DTYPES:
      raise UserInputError(
          f'data.token_dtype={dtype!r} is not one of {TOKEN_DTYPES}; set '
          '--config.data.token_dtype to the dtype the .bin was written with')
    size, itemsize = p.stat().st_size, np.dtype(dtype).itemsize
    if size % itemsize:
      raise UserInputError(
          f"token file '{path}' has {size} bytes, not a multiple of "
          f'{itemsize} ({dtype}); set --config.data.token_dtype to the dtype '
          'it was written with')
    tokens = (np.memmap(p, dtype=dtype, mode='r') if size else
              np.zeros(0, dtype))  # np.memmap refuses an empty file.
    check_not_wider(tokens, path)
  if tokens.size == 0:
    raise UserInputError(f"token file '{path}' holds no tokens; {fix}")
  return tokens


def check_not_wider(tokens: np.ndarray, name: str) -> None:
  """Raises UserInputError if `tokens` look like wider ids read in halves.

  A `.bin` carries no dtype. Little-endian uint32 ids below 65,536 read as
  uint16 come out as (id, 0, id, 0, ...): every id's high half is a 0 in
  the odd positions, and each id would be trained on beside a spurious 0.
  Real uint16 data never holds a 0 at every odd position of its first
  thousands of ids while holding other ids at the even ones.
  """
  wider = {'uint8': 'uint16', 'uint16': 'uint32'}.get(tokens.dtype.name)
  n = min(len(tokens), _DTYPE_SAMPLE) // 2 * 2
  if wider is None or n < _DTYPE_MIN_SAMPLE:
    return
  sample = np.asarray(tokens[:n])
  if not sample[1::2].any() and sample[0::2].any():
    raise UserInputError(
        f"token file '{name}' read as {tokens.dtype.name} holds 0 at every "
        f'odd position of its first {n:,} ids: the high halves of {wider} '
        f'ids; set --config.data.token_dtype={wider}')


def check_token_ids(tokens: np.ndarray, vocab_size: int, name: str) -> None:
  """Raises UserInputError if an id is >= vocab_size (V).

  The check matters because an out-of-range id would not fail in the
  model: JAX clamps gather indices, so the id would silently read the last
  embedding row.
  """
  if np.iinfo(tokens.dtype).max < vocab_size:
    return  # Every value the dtype can hold is a valid id.
  top = max(int(tokens[i:i + _CHECK_CHUNK].max())
            for i in range(0, len(tokens), _CHECK_CHUNK))
  if top >= vocab_size:
    raise UserInputError(
        f"data '{name}' holds token id {top} but model.vocab_size="
        f'{vocab_size}; set --config.model.vocab_size to at least {top + 1} '
        "(the tokenizer's vocabulary size)")
