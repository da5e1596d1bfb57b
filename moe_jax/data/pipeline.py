"""Deterministic, resumable training batches and fixed evaluation batches.

Every training batch is a pure function of (seed, step), so resuming needs only
the step number: no shuffle buffer or RNG state has to be checkpointed.
"""

import numpy as np

from moe_jax.data.corpus import Corpus
from moe_jax.errors import UserInputError, check_non_negative, check_positive

_INTS = (int, np.integer)


def _positive_int(name: str, value, flag: str | None = None) -> int:
  """value as an int; a one-line error naming its flag unless it is > 0."""
  check_positive(name, value, _INTS, fix=f'set {flag or "--config." + name}')
  return int(value)


def _check_fits(corpus: Corpus, seq_len: int) -> np.ndarray:
  """The split's ranges that hold a window of L+1 entries (at least one)."""
  ranges = corpus.ranges()
  fits = ranges[ranges[:, 1] - ranges[:, 0] >= seq_len + 1]
  if not len(fits):
    longest = int((ranges[:, 1] - ranges[:, 0]).max())
    raise UserInputError(
        f'sequence length L={seq_len} needs at least L+1 {corpus.unit} but '
        f'the {corpus.split} split has only {longest} in one piece; use a '
        'smaller --config.seq_len or more data')
  return fits


def _make_batch(corpus: Corpus, starts: np.ndarray,
                seq_len: int) -> dict[str, np.ndarray]:
  """Gathers windows of L+1 bytes at `starts` [B] into a batch dict."""
  idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
  window = corpus.tokens[idx].astype(np.int32)
  batch = {'inputs': window[:, :-1], 'targets': window[:, 1:]}
  if corpus.domains is not None:
    # Labelled by the input byte: the domain the router sees at that position.
    batch['domains'] = corpus.domains[idx[:, :-1]].astype(np.int32)
  return batch


class BatchIterator:
  """Random training windows; batch `step` depends only on (seed, step).

  Each batch is a dict with 'inputs' int32 [B, L], 'targets' int32 [B, L]
  (inputs shifted left by one byte) and, for labelled corpora, 'domains'
  int32 [B, L], the domain of each input byte.
  """

  def __init__(self, corpus: Corpus, batch_size: int, seq_len: int,
               seed: int = 0):
    self.batch_size = _positive_int('batch_size', batch_size)
    self.seq_len = _positive_int('seq_len', seq_len)
    check_non_negative('seed', seed, _INTS, fix='set --config.seed')
    ranges = _check_fits(corpus, self.seq_len)
    # Window starts are numbered across the ranges: range i owns the numbers
    # from _first[i], so one uniform draw picks a window anywhere in the split
    # (with a single range this is exactly the draw of the old contiguous
    # split, so its batches are unchanged).
    counts = ranges[:, 1] - ranges[:, 0] - self.seq_len
    self._range_start = ranges[:, 0]
    self._first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    self._num_starts = int(counts.sum())
    self.corpus = corpus
    self.seed = int(seed)
    self._step = 0

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """The batch of training step `step`, independent of iteration history."""
    if step < 0:
      raise ValueError(f'step must be non-negative, got {step}')
    rng = np.random.default_rng([self.seed, int(step)])
    numbers = rng.integers(0, self._num_starts, size=self.batch_size)
    i = np.searchsorted(self._first, numbers, side='right') - 1
    starts = self._range_start[i] + numbers - self._first[i]
    return _make_batch(self.corpus, starts, self.seq_len)

  def __iter__(self) -> 'BatchIterator':
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = self.batch_at(self._step)
    self._step += 1
    return batch

  next = __next__

  @property
  def step(self) -> int:
    """The step whose batch the next call to next() returns."""
    return self._step

  def get_state(self) -> dict[str, int]:
    """A JSON-serialisable state: just the next step."""
    return {'step': self._step}

  def set_state(self, state: dict[str, int]) -> None:
    """Restores a state from get_state(); the next batch is batch_at(step)."""
    step = state.get('step') if isinstance(state, dict) else None
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or (
        step < 0):
      raise UserInputError(
          f'data iterator state {state!r} has no non-negative integer '
          "'step'; resume from a checkpoint written by this code")
    self._step = int(step)


def eval_windows(corpus: Corpus, seq_len: int) -> np.ndarray:
  """Starts of the consecutive non-overlapping windows of every range."""
  ranges = _check_fits(corpus, seq_len)
  return np.concatenate([
      np.arange(lo, hi - seq_len, seq_len) for lo, hi in ranges])


def eval_batches(corpus: Corpus, batch_size: int, seq_len: int,
                 max_batches: int | None,
                 spread: bool = True) -> list[dict[str, np.ndarray]]:
  """A fixed list of batches of non-overlapping windows of the split.

  Window j has inputs tokens[s_j : s_j + L] and targets shifted by one; the
  s_j are consecutive within each range of the split (eval_windows). Only
  full batches are kept so every batch has the same shape (one jit
  compilation), except when the split holds fewer than batch_size windows:
  then one smaller batch with all of them.

  Args:
    corpus: usually the validation split.
    batch_size: B.
    seq_len: L.
    max_batches: at most this many batches; None: every full batch.
    spread: take the windows of a partial pass evenly spaced over the whole
      split (so a few batches sample every held-out document); False: the
      first ones (the evaluation before 2026-12, for old results).

  Returns:
    Between 1 and max_batches batch dicts, as from BatchIterator.
  """
  batch_size = _positive_int('batch_size', batch_size)
  seq_len = _positive_int('seq_len', seq_len)
  if max_batches is not None:
    max_batches = _positive_int('max_batches', max_batches,
                                '--config.train.eval_batches')
  starts = eval_windows(corpus, seq_len)
  if len(starts) < batch_size:
    return [_make_batch(corpus, starts, seq_len)]
  num_batches = len(starts) // batch_size
  if max_batches is not None and max_batches < num_batches:
    num_batches = max_batches
    if spread:
      pick = np.linspace(0, len(starts), num_batches * batch_size,
                         endpoint=False).astype(np.int64)
      starts = starts[pick]
  return window_batches(corpus, starts[:num_batches * batch_size],
                        batch_size, seq_len)


def window_batches(corpus: Corpus, starts: np.ndarray, batch_size: int,
                   seq_len: int) -> list[dict[str, np.ndarray]]:
  """The windows at `starts`, in that order, as full batches of batch_size
  (a remainder is left out), each a dict as eval_batches'."""
  return [_make_batch(corpus, starts[i:i + batch_size], seq_len)
          for i in range(0, len(starts) - batch_size + 1, batch_size)]
