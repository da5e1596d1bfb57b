"""Train/val split and deterministic, resumable batches.

Every training batch is a pure function of (seed, step), so resuming needs only
the step number: no shuffle buffer or RNG state has to be checkpointed.
"""

import dataclasses

import numpy as np

from moe_jax.data.sources import Corpus
from moe_jax.errors import UserInputError


def split_corpus(corpus: Corpus,
                 val_fraction: float = 0.1) -> tuple[Corpus, Corpus]:
  """Splits off the last val_fraction of the bytes as the validation split.

  The split is contiguous, so no training window overlaps a validation one.

  Args:
    corpus: the full corpus of N bytes.
    val_fraction: share of bytes for validation, in (0, 1).

  Returns:
    (train, val) corpora; each holds at least one byte.
  """
  if not 0.0 < val_fraction < 1.0:
    raise UserInputError(
        f'val_fraction={val_fraction} is outside (0, 1); set '
        '--config.data.val_fraction to e.g. 0.1')
  n = len(corpus)
  if n < 2:
    raise UserInputError(
        f"corpus '{corpus.name}' has {n} {corpus.unit}, too few to split into train "
        'and validation; use more data')
  num_val = min(max(int(n * val_fraction), 1), n - 1)
  cut = n - num_val

  def part(sl, split):
    domains = None if corpus.domains is None else corpus.domains[sl]
    return dataclasses.replace(
        corpus, tokens=corpus.tokens[sl], domains=domains, split=split)

  return part(slice(0, cut), 'train'), part(slice(cut, n), 'val')


def _check_positive_int(name: str, value, flag: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or (
      value <= 0):
    raise UserInputError(
        f'{name}={value!r} must be a positive integer; set {flag} to one')
  return int(value)


def _check_fits(corpus: Corpus, seq_len: int) -> None:
  if seq_len + 1 > len(corpus):
    raise UserInputError(
        f'sequence length L={seq_len} needs at least L+1 {corpus.unit} but '
        f'the {corpus.split} split has only {len(corpus)}; use a smaller '
        '--config.seq_len or more data')


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
    self.batch_size = _check_positive_int('batch_size', batch_size,
                                          '--config.batch_size')
    self.seq_len = _check_positive_int('seq_len', seq_len, '--config.seq_len')
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or (
        seed < 0):
      raise UserInputError(
          f'seed={seed!r} must be a non-negative integer; set --config.seed '
          'to one')
    _check_fits(corpus, self.seq_len)
    self.corpus = corpus
    self.seed = int(seed)
    self._step = 0

  def batch_at(self, step: int) -> dict[str, np.ndarray]:
    """The batch of training step `step`, independent of iteration history."""
    if step < 0:
      raise ValueError(f'step must be non-negative, got {step}')
    rng = np.random.default_rng([self.seed, int(step)])
    num_starts = len(self.corpus) - self.seq_len
    starts = rng.integers(0, num_starts, size=self.batch_size)
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


def eval_batches(corpus: Corpus, batch_size: int, seq_len: int,
                 max_batches: int) -> list[dict[str, np.ndarray]]:
  """A fixed list of batches of consecutive non-overlapping windows.

  Window i has inputs tokens[i*L : (i+1)*L] and targets shifted by one, read
  from the start of the split. Only full batches are kept so every batch has
  the same shape (one jit compilation), except when the split holds fewer
  than batch_size windows: then one smaller batch with all of them.

  Args:
    corpus: usually the validation split.
    batch_size: B.
    seq_len: L.
    max_batches: upper bound on the number of batches.

  Returns:
    Between 1 and max_batches batch dicts, as from BatchIterator.
  """
  batch_size = _check_positive_int('batch_size', batch_size,
                                   '--config.batch_size')
  seq_len = _check_positive_int('seq_len', seq_len, '--config.seq_len')
  max_batches = _check_positive_int('max_batches', max_batches,
                                    '--config.eval_batches')
  _check_fits(corpus, seq_len)
  num_windows = (len(corpus) - 1) // seq_len
  starts = np.arange(num_windows) * seq_len
  if num_windows < batch_size:
    return [_make_batch(corpus, starts, seq_len)]
  num_batches = min(max_batches, num_windows // batch_size)
  return [
      _make_batch(corpus, starts[i * batch_size:(i + 1) * batch_size],
                  seq_len) for i in range(num_batches)
  ]
