"""Tests for moe_jax.data: sources, split and batches."""

import hashlib
import json
import pathlib

import numpy as np
import pytest

from moe_jax import data
from moe_jax.data import shakespeare
from moe_jax.errors import UserInputError

SHARED_SHAKESPEARE = (pathlib.Path(__file__).resolve().parents[1] / '..' /
                      'shared' / 'data' / 'tinyshakespeare.txt')


def _corpus(n=1000, labelled=False):
  tokens = np.arange(n, dtype=np.int64).astype(np.uint8)
  domains = (np.arange(n) // 100).astype(np.int32) if labelled else None
  return data.Corpus(tokens, domains, 'ramp')


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])


def test_batches_are_a_function_of_seed_and_step():
  corpus = _corpus()
  it1 = data.BatchIterator(corpus, 4, 16, seed=3)
  it2 = data.BatchIterator(corpus, 4, 16, seed=3)
  batches = [next(it1) for _ in range(5)]
  for step, batch in enumerate(batches):
    _assert_batches_equal(batch, it2.next())
    _assert_batches_equal(batch, data.BatchIterator(corpus, 4, 16,
                                                    seed=3).batch_at(step))
  other = data.BatchIterator(corpus, 4, 16, seed=4).batch_at(0)
  assert not np.array_equal(other['inputs'], batches[0]['inputs'])
  assert not np.array_equal(batches[0]['inputs'], batches[1]['inputs'])
  assert batches[0]['inputs'].shape == (4, 16)
  assert batches[0]['inputs'].dtype == np.int32
  assert 'domains' not in batches[0]


def test_state_restore_resumes_the_same_batches():
  corpus = _corpus()
  it = data.BatchIterator(corpus, 2, 8, seed=0)
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))
  assert state == {'step': 3}
  expected = [next(it) for _ in range(3)]
  resumed = data.BatchIterator(corpus, 2, 8, seed=0)
  resumed.set_state(state)
  for batch in expected:
    _assert_batches_equal(batch, next(resumed))
  with pytest.raises(UserInputError, match='step'):
    resumed.set_state({'stp': 1})


def test_targets_are_inputs_shifted_by_one_and_domains_aligned():
  corpus = _corpus(labelled=True)
  batch = data.BatchIterator(corpus, 8, 32, seed=1).batch_at(7)
  np.testing.assert_array_equal(batch['inputs'][:, 1:],
                                batch['targets'][:, :-1])
  # On a ramp corpus every target is its input + 1 (mod 256).
  np.testing.assert_array_equal((batch['inputs'] + 1) % 256, batch['targets'])
  # Recover each window's offset from the ramp and check its labels.
  starts = batch['inputs'][:, 0]
  assert batch['domains'].dtype == np.int32
  for row, start in zip(batch['domains'], starts):
    offsets = [o for o in range(1000 - 32) if o % 256 == start]
    assert any(np.array_equal(row, (np.arange(32) + o) // 100)
               for o in offsets)


def test_eval_batches_are_fixed_consecutive_windows():
  corpus = _corpus(1000)
  batches = data.eval_batches(corpus, 4, 10, max_batches=3, spread=False)
  assert len(batches) == 3
  inputs = np.concatenate([b['inputs'] for b in batches]).reshape(-1)
  np.testing.assert_array_equal(inputs, corpus.tokens[:120])
  targets = np.concatenate([b['targets'] for b in batches]).reshape(-1)
  np.testing.assert_array_equal(targets, corpus.tokens[1:121])
  # Fewer windows than the batch size: one smaller batch.
  small = data.eval_batches(_corpus(25), 8, 10, max_batches=5)
  assert len(small) == 1 and small[0]['inputs'].shape == (2, 10)
  # All full batches when max_batches is large.
  assert len(data.eval_batches(corpus, 4, 10, max_batches=1000)) == 24


def test_read_text_path_errors(tmp_path):
  with pytest.raises(UserInputError, match="'.*nope.txt' does not exist"):
    data.read_text_path(tmp_path / 'nope.txt')
  empty = tmp_path / 'empty.txt'
  empty.write_bytes(b'')
  with pytest.raises(UserInputError, match=r'is empty \(0 bytes\)'):
    data.read_text_path(empty)
  with pytest.raises(UserInputError, match='needs a path'):
    data.load_corpus('text', None)
  folder = tmp_path / 'bin'
  folder.mkdir()
  (folder / 'blob.bin').write_bytes(b'\x00')
  with pytest.raises(UserInputError, match='has no files ending in'):
    data.read_text_path(folder)


def test_read_text_path_folder_is_sorted_and_filtered(tmp_path):
  (tmp_path / 'b.txt').write_bytes(b'bee')
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'a.md').write_bytes(b'sub')
  (tmp_path / 'a.py').write_bytes(b'aye')
  (tmp_path / 'skip.bin').write_bytes(b'no')
  (tmp_path / '.hidden').mkdir()
  (tmp_path / '.hidden' / 'x.txt').write_bytes(b'no')
  assert data.read_text_path(tmp_path) == b'aye\nbee\nsub'
  corpus = data.load_corpus('text', str(tmp_path / 'b.txt'))
  assert bytes(corpus.tokens) == b'bee' and corpus.domains is None


def test_unknown_kind_lists_allowed_values():
  with pytest.raises(UserInputError,
                     match="unknown data kind 'wiki'.*'stdlib'.*'synthetic'"):
    data.load_corpus('wiki', None)


def test_synthetic_domains_are_distinguishable():
  tokens, domains = data.synthetic_mixture(60_000, num_domains=4, seed=0)
  assert tokens.shape == domains.shape == (60_000,)
  assert tokens.dtype == np.uint8 and domains.dtype == np.int32
  assert set(np.unique(domains)) == {0, 1, 2, 3}
  tokens2, domains2 = data.synthetic_mixture(60_000, num_domains=4, seed=0)
  np.testing.assert_array_equal(tokens, tokens2)
  np.testing.assert_array_equal(domains, domains2)
  assert not np.array_equal(tokens, data.synthetic_mixture(60_000, 4, 1)[0])
  # Documents: labels change only right after a newline.
  change = np.nonzero(np.diff(domains))[0]
  assert np.all(tokens[change] == ord('\n'))
  # Domains are interleaved, not one block each.
  assert len(change) > 20
  hists = []
  for d in range(4):
    h = np.bincount(tokens[domains == d], minlength=256).astype(float)
    hists.append(h / h.sum())
  for i in range(4):
    for j in range(i + 1, 4):
      total_variation = 0.5 * np.abs(hists[i] - hists[j]).sum()
      assert total_variation > 0.3, (i, j, total_variation)
  # Sparse Markov chains: few of the possible letter bigrams ever occur.
  for d in range(4):
    text = tokens[domains == d]
    letters = np.unique(text[text > ord(' ')])
    a, b = text[:-1].astype(int), text[1:].astype(int)
    both = (a > ord(' ')) & (b > ord(' '))
    num_pairs = len(np.unique(a[both] * 256 + b[both]))
    assert num_pairs <= 4 * len(letters) < len(letters)**2 / 2
  corpus = data.load_corpus('synthetic', None, max_bytes=5000, num_domains=3)
  assert len(corpus) == 5000 and corpus.domains.max() == 2


def test_stdlib_corpus_is_non_empty_and_deterministic():
  a = data.stdlib_corpus(max_bytes=200_000)
  assert len(a) == 200_000
  assert a == data.stdlib_corpus(max_bytes=200_000)
  assert b'def ' in a and b'import ' in a
  corpus = data.load_corpus('stdlib', None, max_bytes=1000)
  assert bytes(corpus.tokens) == a[:1000]
  # Unset, the budget is the whole library (pydoc and the modules after it
  # included), file starts recorded for the split.
  whole = data.load_corpus('stdlib', None)
  assert len(whole) > 8_000_000 and b'class zipimporter' in bytes(
      whole.tokens[-2_000_000:])
  starts = whole.doc_starts
  assert starts[0] == 0 and np.all(np.diff(starts) > 0)
  assert np.all(whole.tokens[starts[1:] - 1] == ord('\n'))


@pytest.mark.skipif(not SHARED_SHAKESPEARE.is_file(),
                    reason='../shared/data/tinyshakespeare.txt not present')
def test_tinyshakespeare_local_path():
  text = data.tinyshakespeare(str(SHARED_SHAKESPEARE))
  assert len(text) == shakespeare.TINYSHAKESPEARE_SIZE
  assert hashlib.md5(text).hexdigest() == shakespeare.TINYSHAKESPEARE_MD5
  corpus = data.load_corpus('tinyshakespeare', str(SHARED_SHAKESPEARE))
  assert bytes(corpus.tokens[:9]) == b'First Cit'


@pytest.mark.skipif(not SHARED_SHAKESPEARE.is_file(),
                    reason='../shared/data/tinyshakespeare.txt not present')
def test_tinyshakespeare_uses_a_valid_cache(tmp_path, monkeypatch):
  monkeypatch.setattr(shakespeare, 'TINYSHAKESPEARE_URL', 'http://127.0.0.1:9/x')
  (tmp_path / 'tinyshakespeare.txt').write_bytes(
      SHARED_SHAKESPEARE.read_bytes())
  assert len(data.tinyshakespeare(cache_dir=str(tmp_path))) == 1_115_394


def test_tinyshakespeare_without_network_is_a_clean_error(tmp_path,
                                                          monkeypatch):
  monkeypatch.setattr(shakespeare, 'TINYSHAKESPEARE_URL', 'http://127.0.0.1:9/x')
  # A corrupt cache must not be trusted; it falls through to the download.
  (tmp_path / 'tinyshakespeare.txt').write_bytes(b'not shakespeare')
  with pytest.raises(UserInputError) as info:
    data.tinyshakespeare(cache_dir=str(tmp_path))
  message = str(info.value)
  assert 'could not be downloaded' in message
  assert '--config.data.path' in message and '\n' not in message
  with pytest.raises(UserInputError, match='does not exist'):
    data.tinyshakespeare(str(tmp_path / 'missing.txt'))


def test_pysource_reads_the_pinned_packages_sources():
  from moe_jax.data import code_corpora
  version, files = code_corpora._distribution_files('ml_collections')
  assert version == '1.1.0' and files  # As requirements.txt pins it.
  assert all(f.suffix == '.py' and f.is_file() for f in files)
  inside = [f.parts[f.parts.index('site-packages') + 1:] for f in files]
  assert not any(code_corpora.SKIP_DIRS & set(parts) for parts in inside)
  with pytest.raises(UserInputError, match='not installed'):
    code_corpora._distribution_files('no-such-distribution')
  docs, name = code_corpora.pysource_documents(max_bytes=50_000)
  assert len(docs.data) == 50_000 and 'ml_collections==1.1.0' in name
