"""Tiny Shakespeare: a local copy, the cached copy, or a verified download."""

import hashlib
import pathlib
import urllib.error
import urllib.request

from moe_jax.data.cache import default_cache_dir
from moe_jax.data.text_files import read_text_path
from moe_jax.errors import UserInputError
from moe_jax.files import atomic_write

TINYSHAKESPEARE_URL = ('https://raw.githubusercontent.com/karpathy/char-rnn/'
                       'master/data/tinyshakespeare/input.txt')
TINYSHAKESPEARE_MD5 = '6fb458f1232090904fb40fe944165e91'
TINYSHAKESPEARE_SIZE = 1_115_394


def _is_tinyshakespeare(data: bytes) -> bool:
  return (len(data) == TINYSHAKESPEARE_SIZE
          and hashlib.md5(data).hexdigest() == TINYSHAKESPEARE_MD5)


def tinyshakespeare(path: str | None = None,
                    cache_dir: str | None = None,
                    url: str | None = None) -> bytes:
  """Tiny Shakespeare: a local copy, the cached copy, or a verified download.

  Args:
    path: a local copy; used as-is when given (it must exist).
    cache_dir: where a download is cached; default ~/.cache/moe_jax.
    url: download address; default TINYSHAKESPEARE_URL (read at call time).

  Returns:
    The corpus bytes.

  Raises:
    UserInputError: the given path is missing, or the download failed.
  """
  if path is not None:
    return read_text_path(path)
  cache = pathlib.Path(cache_dir or default_cache_dir()).expanduser()
  cached = cache / 'tinyshakespeare.txt'
  if cached.is_file():
    data = cached.read_bytes()
    if _is_tinyshakespeare(data):
      return data  # A corrupt cache falls through to a fresh download.
  url = url or TINYSHAKESPEARE_URL
  try:
    with urllib.request.urlopen(url, timeout=10) as response:
      data = response.read()
  except (urllib.error.URLError, OSError, ValueError) as e:
    raise UserInputError(
        f"tinyshakespeare could not be downloaded from '{url}' ({e}); "
        'download input.txt by hand and pass its local path with '
        '--config.data.path') from e
  if not _is_tinyshakespeare(data):
    raise UserInputError(
        f"tinyshakespeare downloaded from '{url}' has {len(data)} bytes and "
        f'md5 {hashlib.md5(data).hexdigest()}, expected '
        f'{TINYSHAKESPEARE_SIZE} bytes with md5 {TINYSHAKESPEARE_MD5}; pass a '
        'good local copy with --config.data.path')
  try:
    atomic_write(cached, data)
  except OSError:
    pass  # A read-only home still gets the data, just without a cache.
  return data
