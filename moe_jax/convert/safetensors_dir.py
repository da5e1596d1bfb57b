"""A folder of `*.safetensors` files, read and written with numpy only.

Hugging Face checkpoints are one `model.safetensors` or shards named
`model-0000i-of-0000n.safetensors` with a `model.safetensors.index.json`
that maps each tensor to its shard. Reading opens every shard and fetches
tensors one at a time, so a checkpoint never sits in memory twice.
"""

from __future__ import annotations

import json
import pathlib
from typing import Mapping

# Registers numpy's 'bfloat16' dtype, which safetensors.numpy needs to read
# the bf16 tensors real checkpoints hold (jax imports it too).
import ml_dtypes  # noqa: F401  pylint: disable=unused-import
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from moe_jax.errors import UserInputError

INDEX = 'model.safetensors.index.json'


class TensorReader:
  """name -> numpy array over every .safetensors file of a folder."""

  def __init__(self, directory: str | pathlib.Path):
    directory = pathlib.Path(directory)
    files = sorted(directory.glob('*.safetensors'))
    if not files:
      raise UserInputError(
          f'{directory} holds no *.safetensors files; pass a Hugging Face '
          'model folder (convert .bin checkpoints to safetensors first).')
    self._handles = [safe_open(str(f), framework='np') for f in files]
    self._where = {name: h for h in self._handles for name in h.keys()}

  def names(self) -> set[str]:
    return set(self._where)

  def info(self, name: str) -> tuple[tuple[int, ...], str]:
    """(shape, safetensors dtype such as 'BF16') without reading the data."""
    view = self._where[name].get_slice(name)
    return tuple(view.get_shape()), view.get_dtype()

  def get(self, name: str) -> np.ndarray:
    if name not in self._where:
      raise UserInputError(
          f'the checkpoint has no tensor {name!r}; its config.json does not '
          'match its weights (or it is not a supported architecture).')
    return self._where[name].get_tensor(name)


def write_tensors(directory: str | pathlib.Path,
                  tensors: Mapping[str, np.ndarray],
                  max_shard_bytes: int = 5 * 2 ** 30) -> list[str]:
  """Writes `tensors` as Hugging Face does: one file, or shards + index.

  Returns the file names written.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  shards, size = [{}], 0
  for name, array in tensors.items():
    if size and size + array.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = np.ascontiguousarray(array)
    size += array.nbytes
  if len(shards) == 1:
    names = ['model.safetensors']
  else:
    names = [f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
             for i in range(len(shards))]
    index = {'metadata': {'total_size': sum(a.nbytes for a in tensors.values())},
             'weight_map': {t: f for f, s in zip(names, shards) for t in s}}
    (directory / INDEX).write_text(json.dumps(index, indent=2))
  for file_name, shard in zip(names, shards):
    # metadata format=pt: transformers refuses files without it.
    save_file(shard, str(directory / file_name), metadata={'format': 'pt'})
  return names
