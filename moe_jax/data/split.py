"""The validation split: whole held-out documents, or evenly spaced chunks.

Why not the last few percent of the bytes (as until 2026-12): the stdlib
corpus is sorted by file name, so its tail was one file of English prose in
string literals (pydoc_data/topics.py), unlike the code the models train on,
and every seed was scored on the same prose. A validation set must look like
the training data: here it is whole files drawn at random from the whole
corpus, with a seed fixed once (SPLIT_SEED), not the run's seed, so every run
on a corpus is scored on the same files. A corpus without file boundaries (one
text file, a token file) holds out evenly spaced chunks instead.

Both splits keep the corpus array and list their [start, end) ranges
(`Corpus.segments`); batches never cross from one range into another.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from moe_jax.data.corpus import Corpus
from moe_jax.errors import UserInputError

# Fixed once (2026-12-05) and never tied to a run's seed: the held-out files
# are part of the corpus definition.
SPLIT_SEED = 20261205
# How a corpus without documents is cut: up to MAX_CHUNKS held-out chunks of
# at least MIN_CHUNK entries each, centred in equal slices of the corpus.
MAX_CHUNKS = 10
MIN_CHUNK = 8192
SPLIT_METHODS = ('documents', 'tail')


def split_corpus(corpus: Corpus, val_fraction: float = 0.05,
                 method: str = 'documents') -> tuple[Corpus, Corpus]:
  """(train, val) corpora.

  Args:
    corpus: the full corpus of N entries.
    val_fraction: share of entries for validation, in (0, 1).
    method: 'documents': hold out whole documents drawn at random (seed
      SPLIT_SEED) up to val_fraction of the entries, or evenly spaced chunks
      when the corpus has no documents; 'tail': the last val_fraction of the
      entries (the split before 2026-12, kept so old results reproduce).

  Returns:
    (train, val) corpora; each holds at least one entry. `val.held_out` says
    what was held out.
  """
  if not 0.0 < val_fraction < 1.0:
    raise UserInputError(
        f'val_fraction={val_fraction} is outside (0, 1); set '
        '--config.data.val_fraction to e.g. 0.05')
  if method not in SPLIT_METHODS:
    raise UserInputError(
        f'data.split={method!r} is not one of {SPLIT_METHODS}; set '
        "--config.data.split='documents' (or 'tail' for the old split)")
  n = len(corpus)
  if n < 2:
    raise UserInputError(
        f"corpus '{corpus.name}' has {n} {corpus.unit}, too few to split into "
        'train and validation; use more data')
  num_val = min(max(int(n * val_fraction), 1), n - 1)
  if method == 'tail':
    return _tail(corpus, n - num_val)
  val = None
  if corpus.doc_starts is not None and len(corpus.doc_starts) > 1:
    val, what = _held_out_documents(corpus, num_val)
  if val is None:
    why = ('no document is small enough to hold out whole'
           if corpus.doc_starts is not None else
           'the corpus has no file boundaries')
    val, what = _held_out_chunks(n, num_val, why)
  train = _complement(val, n)
  return (_part(corpus, train, 'train', what), _part(corpus, val, 'val', what))


def _tail(corpus: Corpus, cut: int) -> tuple[Corpus, Corpus]:
  what = (f'the last {len(corpus) - cut:,} {corpus.unit} (the contiguous '
          'tail of the corpus)')

  def part(sl, split):
    domains = None if corpus.domains is None else corpus.domains[sl]
    return dataclasses.replace(corpus, tokens=corpus.tokens[sl],
                               domains=domains, split=split, doc_starts=None,
                               held_out=what)

  n = len(corpus)
  return part(slice(0, cut), 'train'), part(slice(cut, n), 'val')


def _held_out_documents(corpus: Corpus, num_val: int):
  """Documents in a seeded random order, each taken while it fits num_val.

  Returns ([m, 2] ranges sorted by start, description), or (None, '') when
  no single document fits (then chunks are held out instead).
  """
  n = len(corpus)
  starts = np.asarray(corpus.doc_starts, np.int64)
  ends = np.append(starts[1:], n)
  order = np.random.default_rng(SPLIT_SEED).permutation(len(starts))
  chosen, total = [], 0
  for i in order:
    size = int(ends[i] - starts[i])
    if total + size <= num_val and len(chosen) < len(starts) - 1:
      chosen.append(i)
      total += size
  if not chosen:
    return None, ''
  chosen.sort()
  ranges = np.stack([starts[chosen], ends[chosen]], axis=1)
  what = (f'{len(chosen)} of {len(starts)} documents (files) drawn at random '
          f'across the corpus (seed {SPLIT_SEED}), {total:,} {corpus.unit}')
  return ranges, what


def _held_out_chunks(n: int, num_val: int, why: str):
  """num_val entries as up to MAX_CHUNKS chunks centred in equal slices."""
  k = int(np.clip(num_val // MIN_CHUNK, 1, MAX_CHUNKS))
  size = num_val // k
  centres = (np.arange(k) + 0.5) * n / k
  lo = np.clip(np.round(centres - size / 2).astype(np.int64), 0, n - size)
  ranges = np.stack([lo, lo + size], axis=1)
  what = (f'{k} evenly spaced chunk{"s" * (k > 1)} of {size:,} entries '
          f'({why})')
  return ranges, what


def _complement(ranges: np.ndarray, n: int) -> np.ndarray:
  """The [start, end) ranges of [0, n) that `ranges` (sorted) leave out."""
  edges = np.concatenate([[0], ranges.ravel(), [n]]).reshape(-1, 2)
  return edges[edges[:, 1] > edges[:, 0]]


def _part(corpus: Corpus, ranges: np.ndarray, split: str,
          what: str) -> Corpus:
  return dataclasses.replace(corpus, split=split, doc_starts=None,
                             segments=ranges.astype(np.int64), held_out=what)
