"""The validation split (moe_jax/data/split.py) and batches over its ranges."""

import numpy as np
import pytest

from moe_jax import data
from moe_jax.data import split as split_lib
from moe_jax.errors import UserInputError


def _corpus(n=1000, labelled=False, doc_starts=None):
  tokens = np.arange(n, dtype=np.int64).astype(np.uint16)
  domains = (np.arange(n) // 100).astype(np.int32) if labelled else None
  return data.Corpus(tokens, domains, 'ramp', doc_starts=doc_starts)


def _docs(sizes):
  return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def test_tail_split_is_the_old_contiguous_split():
  corpus = _corpus(1000, labelled=True)
  train, val = data.split_corpus(corpus, 0.1, 'tail')
  assert (len(train), len(val)) == (900, 100)
  np.testing.assert_array_equal(np.concatenate([train.tokens, val.tokens]),
                                corpus.tokens)
  np.testing.assert_array_equal(val.domains, corpus.domains[900:])
  assert (train.split, val.split) == ('train', 'val')
  for bad in (0.0, 1.0, -0.5):
    with pytest.raises(UserInputError, match='val_fraction'):
      data.split_corpus(corpus, bad)
  with pytest.raises(UserInputError, match="data.split='last'"):
    data.split_corpus(corpus, 0.1, 'last')


def test_one_range_gives_the_batches_of_the_old_contiguous_split():
  # A corpus whose split is one range [0, 900) draws exactly the windows the
  # contiguous 900-entry array drew before ranges existed.
  corpus = _corpus(1000)
  as_range = data.BatchIterator(
      data.Corpus(corpus.tokens, None, 'r', segments=np.array([[0, 900]])),
      4, 16, seed=3)
  sliced = data.BatchIterator(data.Corpus(corpus.tokens[:900], None, 'r'), 4,
                              16, seed=3)
  for step in range(4):
    rng = np.random.default_rng([3, step])
    expected = rng.integers(0, 900 - 16, size=4)  # The old draw, by hand.
    for it in (as_range, sliced):
      np.testing.assert_array_equal(it.batch_at(step)['inputs'][:, 0],
                                    expected)


def test_documents_are_held_out_whole_at_random_and_deterministically():
  sizes = [50, 300, 40, 60, 500, 30, 20]  # 1000 entries in 7 documents.
  corpus = _corpus(1000, doc_starts=_docs(sizes))
  train, val = data.split_corpus(corpus, 0.1)
  again = data.split_corpus(corpus, 0.1)[1]
  np.testing.assert_array_equal(val.segments, again.segments)
  starts, ends = _docs(sizes), np.cumsum(sizes)
  whole = {(int(a), int(b)) for a, b in zip(starts, ends)}
  held = {tuple(map(int, r)) for r in val.segments}
  assert held <= whole and 0 < len(val) <= 100  # Whole files, up to 10%.
  # The seeded draw, by hand: documents in permuted order while they fit.
  order = np.random.default_rng(split_lib.SPLIT_SEED).permutation(7)
  total, expected = 0, set()
  for i in order:
    if total + sizes[i] <= 100:
      expected.add((int(starts[i]), int(ends[i])))
      total += sizes[i]
  assert held == expected
  # Train is the rest: together they cover every entry exactly once.
  covered = np.zeros(1000, int)
  for lo, hi in np.concatenate([train.segments, val.segments]):
    covered[lo:hi] += 1
  assert np.all(covered == 1) and len(train) + len(val) == 1000
  assert 'documents' in val.held_out and str(split_lib.SPLIT_SEED) in (
      val.held_out)


def test_batches_stay_inside_their_split_ranges():
  sizes = [120, 80, 150, 90, 200, 110, 250]
  corpus = _corpus(1000, doc_starts=_docs(sizes))
  train, val = data.split_corpus(corpus, 0.2)
  in_val = np.zeros(1000, bool)
  for lo, hi in val.segments:
    in_val[lo:hi] = True
  it = data.BatchIterator(train, 8, 16, seed=0)
  for step in range(30):
    for start in it.batch_at(step)['inputs'][:, 0].astype(int):
      assert not in_val[start:start + 17].any()  # Input and target bytes.
  windows = data.pipeline.eval_windows(val, 16)
  for start in windows:
    assert in_val[start:start + 17].all()
  # Every range of the split contributes windows to the evaluation.
  for lo, hi in val.segments:
    if hi - lo >= 17:
      assert np.any((windows >= lo) & (windows < hi))


def test_without_documents_evenly_spaced_chunks_are_held_out():
  corpus = _corpus(200_000)
  train, val = data.split_corpus(corpus, 0.05)  # 10,000 held out.
  assert len(val) == 10_000 and len(val.segments) == 1  # 10,000 // 8192.
  big = _corpus(2_000_000)
  _, val = data.split_corpus(big, 0.05)
  lengths = val.segments[:, 1] - val.segments[:, 0]
  assert len(val.segments) == split_lib.MAX_CHUNKS and np.all(
      lengths == 10_000)
  centres = val.segments.mean(axis=1)
  np.testing.assert_allclose(centres, (np.arange(10) + 0.5) * 200_000,
                             atol=1)
  assert 'chunks' in val.held_out
  # Documents too large to fit the share fall back to chunks too.
  two = _corpus(1000, doc_starts=np.array([0, 500]))
  assert 'no document is small enough' in data.split_corpus(
      two, 0.1)[1].held_out


def test_a_partial_evaluation_spreads_over_the_whole_split():
  corpus = _corpus(10_000)
  batches = data.eval_batches(corpus, 4, 10, max_batches=2)
  starts = np.concatenate([b['inputs'][:, 0] for b in batches]).astype(int)
  # 999 windows; 8 of them evenly spaced: 0, 124, 249, ... (window index).
  expected = np.linspace(0, 999, 8, endpoint=False).astype(int) * 10
  np.testing.assert_array_equal(starts, expected)
  assert len(data.eval_batches(corpus, 4, 10, max_batches=None)) == 249


def test_seq_len_too_long_names_the_split():
  _, val = data.split_corpus(_corpus(1000), 0.01, 'tail')
  with pytest.raises(UserInputError,
                     match=r'L=64 .* val split has only 10 in one piece;'):
    data.BatchIterator(val, 2, 64, seed=0)
  with pytest.raises(UserInputError, match='seq_len'):
    data.eval_batches(val, 2, 10, 4)
  data.eval_batches(val, 2, 9, 4)  # Exactly L+1 entries is enough.
  with pytest.raises(UserInputError, match='batch_size'):
    data.BatchIterator(val, 0, 4, seed=0)


def test_stdlib_validation_is_code_from_across_the_library():
  corpus = data.load_corpus('stdlib', None)
  train, val = data.split_corpus(corpus, 0.05)
  assert 0.04 * len(corpus) < len(val) <= 0.05 * len(corpus)
  assert len(val.segments) >= 10  # Many files, not one.
  text = b''.join(bytes(corpus.tokens[lo:hi]) for lo, hi in val.segments)
  assert text.count(b'def ') > 100  # Code, not the pydoc prose.
  first, last = val.segments[0, 0], val.segments[-1, 1]
  assert first < 0.25 * len(corpus) and last > 0.75 * len(corpus)


def test_a_checkpoint_from_before_the_split_field_meant_the_tail():
  from moe_jax.config import default_config
  from moe_jax.train import saved_config
  today = default_config.get_default_config().to_dict()
  old = default_config.get_default_config().to_dict()
  del old['data']['split'], old['data']['seed']
  # Resuming an old run on today's default split would change its data.
  assert saved_config.config_differences(old, today) == [
      "data.split: '<absent>' -> 'documents'"]
  today['data']['split'] = 'tail'
  assert saved_config.config_differences(old, today) == []
  # Evaluating or merging it rebuilds the config it trained with.
  config = saved_config.saved_config(old)
  assert config.data.split == 'tail' and config.data.seed is None
  assert saved_config.saved_config(today).data.split == 'tail'
