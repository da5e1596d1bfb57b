"""Corpora: byte-level text (vocab 256) by default, or token ids.

The text sources return raw bytes, so by default the model's vocabulary is the
256 byte values and no tokenizer has to be shipped. `data.tokenizer` encodes
any of them with a Hugging Face tokenizer (moe_jax/data/tokenize.py), and
kind 'tokens' reads a pre-tokenized file (moe_jax/data/tokens.py).
"""

import dataclasses
import hashlib
import os
import pathlib
import urllib.error
import urllib.request

import numpy as np

from moe_jax.data import code_corpora, tokenize, tokens as token_files
from moe_jax.errors import UserInputError, require
from moe_jax.files import atomic_write

VOCAB_SIZE = 256

# Suffixes read when a folder is given; files without one are skipped because
# in practice they are as often binaries (executables, lock files) as text.
TEXT_SUFFIXES = ('.txt', '.md', '.rst', '.py')

TINYSHAKESPEARE_URL = ('https://raw.githubusercontent.com/karpathy/char-rnn/'
                       'master/data/tinyshakespeare/input.txt')
TINYSHAKESPEARE_MD5 = '6fb458f1232090904fb40fe944165e91'
TINYSHAKESPEARE_SIZE = 1_115_394
DEFAULT_CACHE_DIR = os.path.join('~', '.cache', 'moe_jax')
# Overrides DEFAULT_CACHE_DIR (downloads and token caches), e.g. in tests.
CACHE_DIR_ENV = 'MOE_JAX_CACHE_DIR'

CORPUS_KINDS = ('stdlib', 'pysource', 'text', 'tinyshakespeare', 'synthetic', 'tokens')
# Kinds whose text a tokenizer can encode ('synthetic' labels each byte
# with a domain, which tokens would not keep).
TOKENIZABLE_KINDS = ('stdlib', 'pysource', 'text', 'tinyshakespeare')

# The stdlib's file list, for moe_jax.analysis.
stdlib_files = code_corpora.stdlib_files


@dataclasses.dataclass(frozen=True)
class Corpus:
  """A corpus of bytes or token ids.

  Attributes:
    tokens: [N] byte values (uint8) or token ids (uint8/16/32, possibly a
      read-only memory map).
    domains: int32 [N] domain label per byte, or None when unlabelled.
    name: human-readable source name, used in logs and error messages.
    split: which split this is ('all', 'train' or 'val'), for error messages.
    unit: what one entry of `tokens` is, 'bytes' or 'tokens', for messages.
    doc_starts: int64 [n] offset of each document (file) in `tokens`, or
      None when the corpus is one document; the split holds out whole
      documents (moe_jax/data/split.py).
    segments: int64 [m, 2] the [start, end) ranges of `tokens` that belong
      to this split, or None for all of it. A split keeps the whole array
      and its ranges, so a memory-mapped file is never copied.
    held_out: a sentence saying what the validation split holds out.
  """
  tokens: np.ndarray
  domains: np.ndarray | None
  name: str
  split: str = 'all'
  unit: str = 'bytes'
  doc_starts: np.ndarray | None = None
  segments: np.ndarray | None = None
  held_out: str = ''

  def __post_init__(self):
    if (self.tokens.dtype.name not in token_files.TOKEN_DTYPES or
        self.tokens.ndim != 1):
      raise ValueError(f'tokens must be uint8/16/32 [N], got '
                       f'{self.tokens.dtype} {self.tokens.shape}')
    if self.domains is not None and self.domains.shape != self.tokens.shape:
      raise ValueError(f'domains shape {self.domains.shape} does not match '
                       f'tokens shape {self.tokens.shape}')

  def __len__(self) -> int:
    """N, the entries of this split (of every segment together)."""
    if self.segments is None:
      return int(self.tokens.shape[0])
    return int((self.segments[:, 1] - self.segments[:, 0]).sum())

  def ranges(self) -> np.ndarray:
    """int64 [m, 2] the [start, end) ranges of this split."""
    if self.segments is None:
      return np.array([[0, self.tokens.shape[0]]], np.int64)
    return self.segments


def default_cache_dir() -> str:
  """$MOE_JAX_CACHE_DIR, else ~/.cache/moe_jax (read at call time)."""
  return os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR


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


def _domain_language(rng: np.random.Generator, max_alphabet: int):
  """One synthetic 'language': an alphabet and a sparse Markov chain.

  Returns:
    symbols: uint8 [K+1], byte of each state; the last state is the space.
    cdf: float64 [K+1, K+1] cumulative transition probabilities.
    start_cdf: float64 [K+1] cumulative distribution of word-initial states.
  """
  printable = np.arange(33, 127)  # Visible ASCII; the space is reserved.
  k = int(rng.integers(max_alphabet // 2, max_alphabet + 1))
  letters = rng.choice(printable, size=k, replace=False)
  symbols = np.append(letters, ord(' ')).astype(np.uint8)
  mean_word_len = rng.uniform(2.5, 8.0)
  trans = np.zeros((k + 1, k + 1))
  for i in range(k):
    # A handful of successors per letter makes the chain sparse, so bigram
    # statistics (not just the alphabet) identify the domain.
    succ = rng.choice(k, size=int(rng.integers(2, 5)), replace=False)
    trans[i, succ] = rng.dirichlet(np.full(len(succ), 0.5))
    trans[i] *= 1.0 - 1.0 / mean_word_len
    trans[i, k] = 1.0 / mean_word_len
  start = rng.dirichlet(np.full(k, 0.3))
  trans[k, :k] = start  # After a space a new word starts; never two spaces.
  cdf, start_cdf = np.cumsum(trans, axis=1), np.cumsum(start)
  # Rounding can leave a row's total just under 1, and a uniform draw above
  # it would then select a padding state in synthetic_mixture.
  cdf[:, -1] = start_cdf[-1] = 1.0
  return symbols, cdf, start_cdf


def synthetic_mixture(num_bytes: int,
                      num_domains: int = 4,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """A synthetic multi-domain corpus for routing studies.

  Each domain is a generated language with its own alphabet (a subset of
  visible ASCII), its own sparse first-order Markov chain over it, and its own
  mean word length. The corpus is a sequence of documents of 200-600 bytes,
  each from one randomly chosen domain and ending in b'\\n'.

  Args:
    num_bytes: N, the corpus length.
    num_domains: number of languages.
    seed: everything is a deterministic function of the seed.

  Returns:
    tokens: uint8 [N].
    domains: int32 [N], the domain of the document each byte belongs to.
  """
  if num_bytes <= 0 or num_domains <= 0:
    raise UserInputError(
        f'synthetic corpus needs num_bytes > 0 and num_domains > 0, got '
        f'{num_bytes} and {num_domains}; pass positive values')
  rng = np.random.default_rng([seed, num_domains])
  langs = [_domain_language(rng, 24) for _ in range(num_domains)]
  num_docs = num_bytes // 200 + 1
  doc_domain = rng.integers(0, num_domains, size=num_docs)
  doc_len = rng.integers(200, 601, size=num_docs)
  max_len = int(doc_len.max())
  # All documents advance their chains in lockstep: max_len vectorised steps
  # instead of a Python loop over every byte.
  width = max(len(s) for s, _, _ in langs)
  cdf = np.ones((num_domains, width, width))
  start_cdf = np.ones((num_domains, width))
  symbols = np.zeros((num_domains, width), np.uint8)
  for d, (sym, c, s) in enumerate(langs):
    n = len(sym)
    cdf[d, :n, :n], start_cdf[d, :n - 1], symbols[d, :n] = c, s, sym
  u = rng.random((max_len, num_docs))
  state = np.argmax(start_cdf[doc_domain] > u[0][:, None], axis=1)
  states = np.empty((num_docs, max_len), np.int64)
  states[:, 0] = state
  for t in range(1, max_len):
    state = np.argmax(cdf[doc_domain, state] > u[t][:, None], axis=1)
    states[:, t] = state
  text = symbols[doc_domain[:, None], states]
  mask = np.arange(max_len)[None, :] < doc_len[:, None]
  text[np.arange(num_docs), doc_len - 1] = ord('\n')
  tokens = text[mask][:num_bytes]
  domains = np.broadcast_to(doc_domain[:, None], text.shape)[mask]
  return tokens.astype(np.uint8), domains[:num_bytes].astype(np.int32)


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
