"""Corpora of Python source that every machine running moe_jax already has.

'stdlib' is the running interpreter's standard library; 'pysource' adds the
sources of the packages requirements.txt pins, about seven times more code,
for runs that would otherwise read the standard library more than once.
Both keep their file boundaries (`Documents`), so the validation split can
hold out whole files (moe_jax/data/split.py).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import pathlib
import sysconfig

import numpy as np

from moe_jax.errors import UserInputError

# Folders left out everywhere: installed third-party code (in the stdlib
# tree), test suites, and idlelib (a GUI app, mostly widget layout).
SKIP_DIRS = frozenset({'site-packages', 'dist-packages', 'test', 'tests',
                       'idlelib', '__pycache__'})

# The distributions of requirements.txt whose sources 'pysource' adds, in
# this order. Their versions are pinned there, so the corpus is the same on
# every machine that installed requirements.txt; the versions found are part
# of the corpus name.
PYSOURCE_DISTRIBUTIONS = (
    'jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'ml_collections',
    'absl-py', 'numpy', 'scipy', 'matplotlib', 'rich', 'tensorboardX',
    'safetensors', 'tokenizers', 'pytest', 'nbclient', 'nbformat',
    'ipykernel')


@dataclasses.dataclass(frozen=True)
class Documents:
  """Files joined with b'\\n', and where each one starts.

  Attributes:
    data: the joined bytes.
    starts: int64 [n] offset of each file's first byte in `data`.
  """
  data: bytes
  starts: np.ndarray


def join(chunks: list[bytes]) -> Documents:
  """Joins files with b'\\n' (as the corpus always has) and records starts."""
  lengths = np.array([len(c) + 1 for c in chunks], np.int64)
  starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
  return Documents(b'\n'.join(chunks), starts)


def truncate(docs: Documents, max_bytes: int | None) -> Documents:
  """The first max_bytes bytes, keeping the starts that fall inside."""
  if max_bytes is None or max_bytes >= len(docs.data):
    return docs
  return Documents(docs.data[:max_bytes],
                   docs.starts[docs.starts < max_bytes])


def python_files(root: pathlib.Path,
                 skip_dirs=SKIP_DIRS) -> list[pathlib.Path]:
  """`.py` files under `root`, sorted by relative path, skip_dirs left out."""
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in skip_dirs]
    paths.extend(pathlib.Path(dirpath, f) for f in filenames
                 if f.endswith('.py'))
  return sorted(paths, key=lambda f: f.relative_to(root).as_posix())


def stdlib_root() -> pathlib.Path:
  return pathlib.Path(sysconfig.get_paths()['stdlib'])


def stdlib_files(skip_dirs=SKIP_DIRS) -> list[pathlib.Path]:
  """The interpreter's standard-library `.py` files, sorted by relative path."""
  return python_files(stdlib_root(), skip_dirs)


def _read_all(paths, budget: int | None) -> list[bytes]:
  chunks, total = [], 0
  for f in paths:
    try:
      chunk = f.read_bytes()
    except OSError:
      continue  # A broken or unreadable file should not stop training.
    chunks.append(chunk)
    total += len(chunk) + 1
    if budget is not None and total >= budget:
      break
  return chunks


def stdlib_documents(max_bytes: int | None = None) -> Documents:
  """The standard library's sources, one document per file.

  Args:
    max_bytes: truncate to this many bytes; None keeps every file (about
      11 MB on CPython 3.11).
  """
  if max_bytes is not None and max_bytes <= 0:
    raise UserInputError(f'max_bytes={max_bytes} must be positive; pass a '
                         'positive byte budget')
  docs = truncate(join(_read_all(stdlib_files(), max_bytes)), max_bytes)
  if not docs.data:
    raise UserInputError(
        f"no Python sources found under the stdlib folder '{stdlib_root()}'; "
        "use --config.data.kind='text' with --config.data.path instead")
  return docs


def _distribution_files(name: str) -> tuple[str, list[pathlib.Path]]:
  try:
    dist = importlib.metadata.distribution(name)
  except importlib.metadata.PackageNotFoundError:
    raise UserInputError(
        f"data kind 'pysource' reads the installed sources of {name}, which "
        'is not installed; pip install -r requirements.txt, or use '
        "--config.data.kind='stdlib'") from None
  files = []
  for f in dist.files or ():
    parts = pathlib.PurePath(f).parts
    if (str(f).endswith('.py') and parts and not parts[0].startswith('..')
        and not SKIP_DIRS.intersection(parts)):
      files.append(f)
  files.sort(key=str)
  return dist.version, [pathlib.Path(f.locate()) for f in files]


def pysource_documents(max_bytes: int | None = None) -> tuple[Documents, str]:
  """The stdlib plus the sources of PYSOURCE_DISTRIBUTIONS, one file a document.

  Returns:
    (documents, a name that lists the package versions read).
  """
  paths, versions = list(stdlib_files()), []
  for name in PYSOURCE_DISTRIBUTIONS:
    version, files = _distribution_files(name)
    versions.append(f'{name}=={version}')
    paths.extend(files)
  docs = truncate(join(_read_all(paths, max_bytes)), max_bytes)
  return docs, 'pysource (stdlib + ' + ', '.join(versions) + ')'
