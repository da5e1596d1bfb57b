"""Writing files so that a crash never leaves a torn one."""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
from typing import Callable

from moe_jax.errors import UserInputError


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file and a rename.

  Readers see the old file or the new one, never a partial write: the
  temporary file lives in the same folder, so os.replace is atomic, and it
  is on disk before the rename, so a crash after it keeps the new content.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + '.tmp')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike,
                  keep: Callable[[pathlib.Path], bool] = lambda p: False):
  """Yields a temporary folder beside `path` to write into; on success it
  becomes `path`, on any exception it is removed and `path` is untouched.

  A folder already at `path` is replaced as a whole: it is renamed aside,
  the new folder renamed into place, then the old one removed, so at any
  moment one complete version exists under `path` or under the aside name
  (`<name>.old*`, left only by a crash between the two renames). Entries of
  the old folder for which `keep` is true (e.g. a tokenizer.json someone
  put beside an earlier export) are copied into the new one first.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.exists() and not path.is_dir():
    raise UserInputError(f"'{path}' is a file; pass a folder to write to (a "
                         'new one, or one that an earlier export wrote)')
  tmp = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name +
                                      '.tmp'))
  try:
    yield tmp
    if path.is_dir():
      for entry in path.iterdir():
        if keep(entry) and not (tmp / entry.name).exists():
          copy = shutil.copytree if entry.is_dir() else shutil.copy2
          copy(entry, tmp / entry.name)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if not path.exists():
    os.replace(tmp, path)
    return
  old = pathlib.Path(tempfile.mkdtemp(dir=path.parent, prefix=path.name +
                                      '.old'))
  os.replace(path, old / path.name)
  try:
    os.replace(tmp, path)
  except BaseException:
    os.replace(old / path.name, path)  # Put the good version back.
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    raise
  shutil.rmtree(old, ignore_errors=True)
