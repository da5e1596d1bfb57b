"""Corpus: the bytes or token ids a run reads, and the ranges of a split."""

import dataclasses

import numpy as np

from moe_jax.data import tokens as token_files

VOCAB_SIZE = 256


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
