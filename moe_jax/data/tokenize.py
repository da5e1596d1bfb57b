"""Text to token ids with a Hugging Face `tokenizer.json`, encoded once.

A user with a Hugging Face model folder trains or evaluates on their own text
with that model's tokenizer: `--config.data.tokenizer=<folder or
tokenizer.json>`. The text is encoded once with the `tokenizers` library and
the ids are cached as a `.npy` token file keyed by the hash of the tokenizer
and the text, so later runs (and resumes) memory-map the same ids.
"""

from __future__ import annotations

import hashlib
import io
import os
import pathlib

import numpy as np

from moe_jax.errors import UserInputError
from moe_jax.files import atomic_write

# Pieces handed to the tokenizer at once: encode_batch runs them in
# parallel, and a piece of ~64 KiB keeps the per-token bookkeeping of one
# call small.
_PIECE_CHARS = 1 << 16


def tokenizer_file(path: str | os.PathLike) -> pathlib.Path:
  """`path` itself, or `path/tokenizer.json` for a model folder."""
  p = pathlib.Path(path).expanduser()
  if p.is_dir():
    p = p / 'tokenizer.json'
  if not p.is_file():
    raise UserInputError(
        f"no tokenizer at '{p}'; set --config.data.tokenizer to a "
        'tokenizer.json or a Hugging Face model folder that holds one')
  return p


def load_tokenizer(path: str | os.PathLike):
  """The `tokenizers.Tokenizer` of a tokenizer.json (or a folder with one)."""
  p = tokenizer_file(path)
  try:
    # Imported here: only tokenized runs need the library.
    import tokenizers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise UserInputError(
        'data.tokenizer needs the tokenizers library; pip install -r '
        'requirements.txt (or pip install tokenizers)') from e
  try:
    return tokenizers.Tokenizer.from_file(str(p))
  except Exception as e:  # pylint: disable=broad-except
    # The Rust side raises a plain Exception for any parse failure.
    reason = ' '.join(str(e).split())[:200]
    raise UserInputError(
        f"'{p}' is not a tokenizer.json the tokenizers library reads "
        f'({reason}); point --config.data.tokenizer at a valid one') from e


def line_pieces(text: str, size: int = _PIECE_CHARS) -> list[str]:
  """Cuts `text` into pieces of at least `size` characters (the last may be
  shorter), each ending at a line end or the end of the text, so that
  joined they give `text` back.

  Cutting at line ends keeps the pieces' tokens those of the whole text for
  the usual pre-tokenizers, which never merge across a newline followed by a
  word; a run of whitespace straddling a cut can tokenize differently.
  """
  pieces, start = [], 0
  while start < len(text):
    end = text.find('\n', start + size - 1)
    end = len(text) if end < 0 else end + 1
    pieces.append(text[start:end])
    start = end
  return pieces


def encode(tokenizer, text: str) -> np.ndarray:
  """The ids of `text`, without special tokens (no BOS per piece).

  Returns:
    uint16 [N] when the vocabulary fits in 16 bits, else uint32 [N].
  """
  dtype = np.uint16 if tokenizer.get_vocab_size() <= 1 << 16 else np.uint32
  encodings = tokenizer.encode_batch_fast(line_pieces(text),
                                          add_special_tokens=False)
  ids = [np.asarray(e.ids, dtype) for e in encodings]
  return np.concatenate(ids) if ids else np.zeros(0, dtype)


def encode_cached(data: bytes, tokenizer_path: str | os.PathLike,
                  cache_dir: str | os.PathLike) -> np.ndarray:
  """Token ids of UTF-8 `data`, from the cache or encoded and cached.

  Args:
    data: the text's bytes (invalid UTF-8 is replaced by U+FFFD).
    tokenizer_path: a tokenizer.json or a folder that holds one.
    cache_dir: the cache lives in `cache_dir/tokens/<hash>.npy`.

  Returns:
    The ids, memory-mapped from the cache file ([N], uint16 or uint32).
  """
  p = tokenizer_file(tokenizer_path)
  key = hashlib.sha256(p.read_bytes() + b'\0' + data).hexdigest()[:24]
  cached = pathlib.Path(cache_dir).expanduser() / 'tokens' / f'{key}.npy'
  if cached.is_file():
    try:
      return np.load(cached, mmap_mode='r', allow_pickle=False)
    except (ValueError, OSError, EOFError):
      pass  # A damaged cache file is rewritten below.
  ids = encode(load_tokenizer(p), data.decode('utf-8', errors='replace'))
  if not len(ids):
    raise UserInputError(
        f"the tokenizer '{p}' turned the text into no tokens; check "
        '--config.data.tokenizer and the data')
  buffer = io.BytesIO()
  np.save(buffer, ids)
  try:
    atomic_write(cached, buffer.getvalue())
  except OSError:
    return ids  # A read-only cache still trains, re-encoding next time.
  return np.load(cached, mmap_mode='r', allow_pickle=False)
