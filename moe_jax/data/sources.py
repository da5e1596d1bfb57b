"""Corpora: byte-level text (vocab 256) by default, or token ids.

The text sources return raw bytes, so by default the model's vocabulary is the
256 byte values and no tokenizer has to be shipped. `data.tokenizer` encodes
any of them with a Hugging Face tokenizer (moe_jax/data/tokenize.py), and
kind 'tokens' reads a pre-tokenized file (moe_jax/data/tokens.py).

This file maps a kind to its reader: text files and folders (text_files.py),
the standard library and pinned packages (code_corpora.py), Tiny Shakespeare
(shakespeare.py) and the synthetic languages (synthetic.py); each returns
a Corpus (corpus.py).
"""

import pathlib

import numpy as np

from moe_jax.data import code_corpora, tokenize, tokens as token_files
from moe_jax.data.cache import default_cache_dir
from moe_jax.data.corpus import Corpus
from moe_jax.data.shakespeare import tinyshakespeare
from moe_jax.data.synthetic import synthetic_mixture
from moe_jax.data.text_files import text_documents
from moe_jax.errors import UserInputError, require

CORPUS_KINDS = ('stdlib', 'pysource', 'text', 'tinyshakespeare', 'synthetic', 'tokens')
# Kinds whose text a tokenizer can encode ('synthetic' labels each byte
# with a domain, which tokens would not keep).
TOKENIZABLE_KINDS = ('stdlib', 'pysource', 'text', 'tinyshakespeare')


def stdlib_corpus(max_bytes: int | None = None) -> bytes:
  """The default corpus: the running interpreter's standard library sources.

  It exists on every machine that can run this code, so examples and tests
  need neither a download nor a data file. Files are sorted by relative path;
  third-party packages, the stdlib's own test suites and idlelib are skipped.

  Args:
    max_bytes: the result is truncated to this many bytes; None: all of it.

  Returns:
    The `.py` sources joined with b'\\n'.
  """
  return code_corpora.stdlib_documents(max_bytes).data


def load_corpus(kind: str,
                path: str | None = None,
                *,
                max_bytes: int | None = None,
                num_domains: int = 4,
                seed: int = 0,
                cache_dir: str | None = None,
                tokenizer: str | None = None,
                token_dtype: str = 'uint16') -> Corpus:
  """Loads a corpus by name.

  Args:
    kind: one of CORPUS_KINDS.
    path: required for 'text' and 'tokens'; an optional local copy for
      'tinyshakespeare'.
    max_bytes: truncates any corpus; the size of 'synthetic' (default 1e6).
      Unset, 'stdlib' and 'pysource' read every file. It counts the text's bytes
      before a tokenizer encodes it, and the ids of a 'tokens' file.
    num_domains: domains of 'synthetic'.
    seed: seed of 'synthetic'.
    cache_dir: download and token cache; default default_cache_dir().
    tokenizer: a tokenizer.json (or a Hugging Face model folder holding one)
      that encodes the text of a TOKENIZABLE_KINDS corpus; None: bytes.
    token_dtype: the dtype of a 'tokens' `.bin` file.

  Returns:
    The Corpus; `domains` is set only for 'synthetic'.
  """
  require(max_bytes is None or max_bytes > 0, 'data.max_bytes', max_bytes,
          'be positive', 'set a positive --config.data.max_bytes or leave it '
          'unset')
  if tokenizer and kind not in TOKENIZABLE_KINDS:
    raise UserInputError(
        f'data.tokenizer is set but data.kind={kind!r} has no text to encode; '
        f"use it with data.kind in {TOKENIZABLE_KINDS} or unset it")
  docs = None  # Documents of the text kinds, where the files are known.
  name = kind
  if kind == 'stdlib':
    docs = code_corpora.stdlib_documents(max_bytes)
  elif kind == 'pysource':
    docs, name = code_corpora.pysource_documents(max_bytes)
  elif kind == 'text':
    if not path:
      raise UserInputError(
          "data kind 'text' needs a path; set --config.data.path to a text "
          'file or folder')
    docs, name = text_documents(path), pathlib.Path(path).name
  elif kind == 'tinyshakespeare':
    docs = code_corpora.join([tinyshakespeare(path, cache_dir)])
  elif kind == 'synthetic':
    tokens, domains = synthetic_mixture(max_bytes or 1_000_000, num_domains,
                                        seed)
    return Corpus(tokens, domains, f'synthetic{num_domains}')
  elif kind == 'tokens':
    if not path:
      raise UserInputError(
          "data kind 'tokens' needs a path; set --config.data.path to a .npy "
          'or .bin file of token ids')
    ids = token_files.read_token_file(path, token_dtype)
    return Corpus(ids[:max_bytes], None, pathlib.Path(path).name,
                  unit='tokens')
  else:
    raise UserInputError(
        f"unknown data kind '{kind}'; set --config.data.kind to one of "
        f"{', '.join(repr(k) for k in CORPUS_KINDS)}")
  docs = code_corpora.truncate(docs, max_bytes)
  if tokenizer:
    # Token ids lose the file boundaries; the split then holds out evenly
    # spaced chunks instead of whole files.
    ids = tokenize.encode_cached(docs.data, tokenizer, cache_dir or
                                 default_cache_dir())
    return Corpus(ids, None, f'{name} ({tokenize.tokenizer_file(tokenizer)})',
                  unit='tokens')
  starts = docs.starts if len(docs.starts) > 1 else None
  return Corpus(np.frombuffer(docs.data, np.uint8).copy(), None, name,
                doc_starts=starts)
