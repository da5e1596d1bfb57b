"""Text files and folders read as bytes, one document per file."""

import os
import pathlib

from moe_jax.data import code_corpora
from moe_jax.errors import UserInputError

# Suffixes read when a folder is given; files without one are skipped because
# in practice they are as often binaries (executables, lock files) as text.
TEXT_SUFFIXES = ('.txt', '.md', '.rst', '.py')


def _read_file(path: pathlib.Path) -> bytes:
  try:
    return path.read_bytes()
  except OSError as e:
    raise UserInputError(
        f"data file '{path}' cannot be read ({e.strerror or e}); fix its "
        'permissions or set --config.data.path to a readable file') from e


def read_text_path(path: str | os.PathLike) -> bytes:
  """Reads a text file, or every text file under a folder (see text_documents)."""
  return text_documents(path).data


def text_documents(path: str | os.PathLike) -> code_corpora.Documents:
  """Reads a text file, or every text file under a folder, as documents.

  For a folder, regular files ending in one of TEXT_SUFFIXES are read
  recursively (hidden files and folders skipped), sorted by relative path so
  the result is deterministic, and joined with b'\\n'.

  Args:
    path: a file or a folder.

  Returns:
    The raw bytes, and where each file starts (one start for a file).

  Raises:
    UserInputError: the path is missing, unreadable, or holds no bytes.
  """
  p = pathlib.Path(path).expanduser()
  if not p.exists():
    raise UserInputError(
        f"data path '{path}' does not exist; set --config.data.path to an "
        'existing text file or folder')
  if p.is_dir():
    files = sorted(
        f for f in p.rglob('*')
        if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES
        and not any(part.startswith('.') for part in f.relative_to(p).parts))
    if not files:
      raise UserInputError(
          f"data folder '{path}' has no files ending in "
          f"{', '.join(TEXT_SUFFIXES)}; add text files or point "
          '--config.data.path at a text file')
    docs = code_corpora.join([_read_file(f) for f in files])
  else:
    docs = code_corpora.join([_read_file(p)])
  if not docs.data:
    raise UserInputError(
        f"data path '{path}' is empty (0 bytes); set --config.data.path to a "
        'non-empty text file or folder')
  return docs
