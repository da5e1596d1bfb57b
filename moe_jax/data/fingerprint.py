"""A fingerprint of the data a run trains on, kept in every checkpoint.

Exact resume means the same batches, and batches are a pure function of
(seed, step) *and the data*. The config names the data (a path, a kind), but
the file behind a name can change: a text edited, a tokenizer.json replaced,
a token file regenerated. The fingerprint is a hash of the ids the run reads
and of the tokenizer file, so a resume on other data is refused
(moe_jax/train/checkpoint.py) instead of silently training on it.

Byte corpora are in memory and hash in milliseconds. A memory-mapped token
file (a `tokens` file or a tokenizer's id cache) may be far larger than
memory, so its hash is computed once and cached, keyed by the file's path,
size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import numpy as np

from moe_jax.data.corpus import Corpus
from moe_jax.data.cache import default_cache_dir
from moe_jax.data.tokenize import tokenizer_file
from moe_jax.files import atomic_write

# Bytes hashed at a time, so a memory-mapped file is never loaded whole.
_CHUNK = 1 << 24


def _sha256_of_array(ids: np.ndarray) -> str:
  h = hashlib.sha256()
  for i in range(0, len(ids), _CHUNK // ids.itemsize):
    h.update(np.ascontiguousarray(ids[i:i + _CHUNK // ids.itemsize]).data)
  return h.hexdigest()


def _sha256_of_mapped(ids: np.memmap, cache_dir: str | os.PathLike) -> str:
  """The hash of `ids`, a prefix of a memory-mapped file, cached on disk.

  The cache key is (path, size, mtime, dtype, length): a file rewritten in
  place gets a new mtime, so its hash is computed again.
  """
  path = pathlib.Path(ids.filename).resolve()
  stat = path.stat()
  key = json.dumps([str(path), stat.st_size, stat.st_mtime_ns,
                    ids.dtype.name, len(ids)])
  cached = (pathlib.Path(cache_dir).expanduser() / 'fingerprints' /
            f'{hashlib.sha256(key.encode()).hexdigest()[:24]}.json')
  try:
    record = json.loads(cached.read_text())
    if record.get('key') == key:
      return record['sha256']
  except (OSError, ValueError, AttributeError):
    pass  # No cache yet, or a damaged one: hash again below.
  digest = _sha256_of_array(ids)
  try:
    atomic_write(cached, json.dumps({'key': key, 'sha256': digest}).encode())
  except OSError:
    pass  # A read-only cache still works, hashing again next time.
  return digest


def data_fingerprint(corpus: Corpus, tokenizer: str | None = None,
                     cache_dir: str | os.PathLike | None = None) -> dict:
  """What a checkpoint records about its data.

  Args:
    corpus: the loaded corpus, before any split (load_corpus's result, whose
      ids are a whole token file or its first ids).
    tokenizer: data.tokenizer (a tokenizer.json or a folder with one), or
      None for bytes and token files.
    cache_dir: where mapped files' hashes are cached; default
      default_cache_dir().

  Returns:
    {'name', 'count', 'dtype', 'sha256' of the ids, 'tokenizer_sha256'
    (None without a tokenizer)}: plain JSON values.
  """
  ids = corpus.tokens
  if isinstance(ids, np.memmap) and ids.filename:
    digest = _sha256_of_mapped(ids, cache_dir or default_cache_dir())
  else:
    digest = _sha256_of_array(ids)
  tok = None
  if tokenizer:
    tok = hashlib.sha256(tokenizer_file(tokenizer).read_bytes()).hexdigest()
  return {'name': corpus.name, 'count': len(corpus), 'dtype': ids.dtype.name,
          'sha256': digest, 'tokenizer_sha256': tok}


def data_differences(saved: dict, current: dict) -> list[str]:
  """What changed between two fingerprints, in words; [] when nothing did."""
  diffs = []
  if saved.get('tokenizer_sha256') != current.get('tokenizer_sha256'):
    diffs.append('the tokenizer file changed')
  if (saved.get('sha256'), saved.get('dtype')) != (current.get('sha256'),
                                                   current.get('dtype')):
    diffs.append(
        f"the ids of {current.get('name')} changed ({saved.get('count'):,} "
        f"{saved.get('dtype')} -> {current.get('count'):,} "
        f"{current.get('dtype')}, other content)")
  return diffs
