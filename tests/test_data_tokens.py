"""Tests for token data: nanoGPT-style token files and tokenizer.json text."""

import numpy as np
import pytest

from moe_jax import data
from moe_jax.data import tokenize, tokens
from moe_jax.errors import UserInputError
from moe_jax.train import setup
from tests import testlib

TEXT = ('def add(a, b):\n    return a + b\n\n'
        'The quick brown fox jumps over the lazy dog.\n') * 40


def _ramp(n, dtype, start=0):
  return (np.arange(n) + start).astype(dtype)


def _tokenizer(folder, vocab_size=300):
  """A byte-level BPE trained on TEXT, saved as folder/tokenizer.json."""
  from tokenizers import Tokenizer, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.train_from_iterator([TEXT], trainers.BpeTrainer(
      vocab_size=vocab_size, show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  folder.mkdir(exist_ok=True)
  tok.save(str(folder / 'tokenizer.json'))
  return tok


def test_bin_and_npy_files_are_memory_mapped_ids(tmp_path):
  ids16 = _ramp(1000, np.uint16, start=60_000)  # Above 2**15: unsigned.
  ids16.tofile(tmp_path / 'train.bin')  # nanoGPT's prepare.py format.
  corpus = data.load_corpus('tokens', str(tmp_path / 'train.bin'))
  assert isinstance(corpus.tokens, np.memmap)
  assert corpus.tokens.dtype == np.uint16 and corpus.unit == 'tokens'
  np.testing.assert_array_equal(corpus.tokens, ids16)
  # The same bytes read as uint32 pair up the uint16 ids (little-endian).
  as32 = data.load_corpus('tokens', str(tmp_path / 'train.bin'),
                          token_dtype='uint32').tokens
  assert as32[0] == 60_000 + (60_001 << 16) and len(as32) == 500

  ids32 = _ramp(500, np.uint32, start=100_000)
  np.save(tmp_path / 'ids.npy', ids32)
  corpus = data.load_corpus('tokens', str(tmp_path / 'ids.npy'),
                            max_bytes=300)  # Counts tokens for 'tokens'.
  assert corpus.tokens.dtype == np.uint32 and len(corpus) == 300
  batch = data.BatchIterator(corpus, 4, 16, seed=0).batch_at(3)
  # Ids above 2**16 survive, and targets are the next ids on the ramp.
  assert batch['inputs'].min() >= 100_000
  np.testing.assert_array_equal(batch['targets'], batch['inputs'] + 1)


def test_token_batches_are_a_function_of_seed_and_step(tmp_path):
  np.save(tmp_path / 'ids.npy', _ramp(5000, np.uint16))
  corpus = data.load_corpus('tokens', str(tmp_path / 'ids.npy'))
  train, val = data.split_corpus(corpus, 0.1)
  it = data.BatchIterator(train, 4, 32, seed=7)
  first = [next(it) for _ in range(5)]
  # A "resumed" iterator over a freshly opened file gives the same batches.
  reopened = data.split_corpus(
      data.load_corpus('tokens', str(tmp_path / 'ids.npy')), 0.1)[0]
  resumed = data.BatchIterator(reopened, 4, 32, seed=7)
  resumed.set_state({'step': 2})
  for batch in first[2:]:
    got = next(resumed)
    np.testing.assert_array_equal(got['inputs'], batch['inputs'])
    np.testing.assert_array_equal(got['targets'], batch['targets'])
  assert not np.array_equal(first[0]['inputs'], first[1]['inputs'])
  # Training windows stay out of the held-out chunk (one, in the middle).
  lo, hi = val.segments[0]
  assert len(val.segments) == 1 and (lo, hi) == (2250, 2750)
  for b in first:
    window_ends = b['inputs'][:, 0].astype(int) + 32
    assert np.all((window_ends < lo) | (b['inputs'][:, 0] >= hi))
  assert data.eval_batches(val, 4, 32, 2)[0]['inputs'][0, 0] == lo


def test_token_file_errors_are_one_line(tmp_path):
  def fails(match, path, **kw):
    with pytest.raises(UserInputError, match=match) as e:
      data.load_corpus('tokens', str(path), **kw)
    assert '\n' not in str(e.value)

  fails('does not exist', tmp_path / 'nope.bin')
  (tmp_path / 'ids.txt').write_text('1 2 3')
  fails(r"ends in '.txt', not .npy or .bin", tmp_path / 'ids.txt')
  (tmp_path / 'odd.bin').write_bytes(b'\x01\x02\x03')
  fails(r'has 3 bytes, not a multiple of 2 \(uint16\); set '
        '--config.data.token_dtype', tmp_path / 'odd.bin')
  fails("token_dtype='int64' is not one of", tmp_path / 'odd.bin',
        token_dtype='int64')
  (tmp_path / 'empty.bin').write_bytes(b'')
  fails('holds no tokens', tmp_path / 'empty.bin')
  np.save(tmp_path / 'float.npy', np.ones(10, np.float32))
  fails(r'holds float32 \(10,\), not 1-D ids', tmp_path / 'float.npy')
  np.save(tmp_path / 'matrix.npy', np.ones((2, 5), np.uint16))
  fails(r'holds uint16 \(2, 5\)', tmp_path / 'matrix.npy')
  (tmp_path / 'torn.npy').write_bytes(b'\x93NUMPY garbage')
  fails('not a readable .npy file', tmp_path / 'torn.npy')
  with pytest.raises(UserInputError, match="'tokens' needs a path"):
    data.load_corpus('tokens', None)


def test_uint32_bin_read_as_uint16_is_refused(tmp_path):
  # GPT-2 ids written as uint32: read as uint16 they were (id, 0, id, 0, ...)
  # and in range, so nothing caught it.
  ids = np.random.default_rng(0).integers(1, 50_257, 1000).astype(np.uint32)
  ids.tofile(tmp_path / 'train.bin')
  with pytest.raises(UserInputError, match=r"read as uint16 holds 0 at every "
                     r'odd position of its first 2,000 ids.*set '
                     '--config.data.token_dtype=uint32'):
    data.load_corpus('tokens', str(tmp_path / 'train.bin'))
  corpus = data.load_corpus('tokens', str(tmp_path / 'train.bin'),
                            token_dtype='uint32')
  np.testing.assert_array_equal(corpus.tokens, ids)
  # Real uint16 ids with zeros among them pass.
  ids16 = ids.astype(np.uint16)
  ids16[1::4] = 0
  ids16.tofile(tmp_path / 'u16.bin')
  assert len(data.load_corpus('tokens', str(tmp_path / 'u16.bin'))) == 1000


def test_ids_at_or_above_vocab_size_are_refused(tmp_path):
  ids = np.array([3, 299, 17, 300, 5], np.uint16)
  with pytest.raises(UserInputError, match=r"holds token id 300 but "
                     r'model.vocab_size=300; set --config.model.vocab_size '
                     'to at least 301'):
    tokens.check_token_ids(ids, 300, 'x.bin')
  tokens.check_token_ids(ids, 301, 'x.bin')
  tokens.check_token_ids(np.full(3, 255, np.uint8), 256, 'bytes')
  # Through the trainer's data loading, before anything is built.
  np.save(tmp_path / 'ids.npy', np.tile(ids, 1000))
  config = testlib.tiny_config('configs/dense.py', {
      'data.kind': 'tokens', 'data.path': str(tmp_path / 'ids.npy'),
      'data.max_bytes': None})
  with pytest.raises(UserInputError, match='token id 300 but '
                     'model.vocab_size=256'):
    setup.load_data(config)
  config.model.vocab_size = 301
  corpus, batches = setup.load_data(config)[:2]
  assert corpus.unit == 'tokens' and batches.batch_at(0)['inputs'].max() <= 300


def test_line_pieces_cut_at_line_ends_and_join_back():
  text = 'ab\ncd\n\nefgh\nij'
  # Each piece holds at least `size` characters, up to the next line end.
  assert tokenize.line_pieces(text, 2) == ['ab\n', 'cd\n', '\nefgh\n', 'ij']
  assert tokenize.line_pieces(text, 6) == ['ab\ncd\n', '\nefgh\n', 'ij']
  assert ''.join(tokenize.line_pieces(TEXT, 50)) == TEXT
  assert tokenize.line_pieces('') == []


def test_tokenizer_json_encodes_once_and_caches(tmp_path, monkeypatch):
  tok = _tokenizer(tmp_path / 'model')
  (tmp_path / 'my.txt').write_text(TEXT)
  cache = tmp_path / 'cache'
  corpus = data.load_corpus('text', str(tmp_path / 'my.txt'),
                            tokenizer=str(tmp_path / 'model'),
                            cache_dir=str(cache))
  expected = tok.encode(TEXT, add_special_tokens=False).ids
  assert len(expected) < len(TEXT) // 2  # The merges did compress.
  np.testing.assert_array_equal(corpus.tokens, expected)
  assert corpus.tokens.dtype == np.uint16 and corpus.unit == 'tokens'
  # Encoding in pieces (cut at line ends) gives the whole text's ids.
  np.testing.assert_array_equal(
      tokenize.encode(tok, TEXT[:700]),
      tok.encode(TEXT[:700], add_special_tokens=False).ids)
  assert len(list((cache / 'tokens').glob('*.npy'))) == 1

  # A second load reads the cache: it no longer needs the tokenizer library.
  def no_encoding(*_):
    raise AssertionError('encoded again')
  monkeypatch.setattr(tokenize, 'load_tokenizer', no_encoding)
  again = data.load_corpus('text', str(tmp_path / 'my.txt'),
                           tokenizer=str(tmp_path / 'model' / 'tokenizer.json'),
                           cache_dir=str(cache))
  np.testing.assert_array_equal(again.tokens, expected)
  # Other text misses the cache.
  with pytest.raises(AssertionError, match='encoded again'):
    data.load_corpus('text', str(tmp_path / 'my.txt'), max_bytes=100,
                     tokenizer=str(tmp_path / 'model'), cache_dir=str(cache))


def test_tokenizer_errors_are_one_line(tmp_path):
  (tmp_path / 'my.txt').write_text(TEXT)
  def fails(match, **kw):
    kw = {'tokenizer': str(tmp_path / 'model'),
          'cache_dir': str(tmp_path / 'cache'), **kw}
    with pytest.raises(UserInputError, match=match) as e:
      data.load_corpus(kw.pop('kind', 'text'), str(tmp_path / 'my.txt'), **kw)
    assert '\n' not in str(e.value)

  fails(r"no tokenizer at '.*model'; set "
        '--config.data.tokenizer')
  (tmp_path / 'model').mkdir()
  (tmp_path / 'model' / 'tokenizer.json').write_text('{"not": "a tokenizer"')
  fails('is not a tokenizer.json the tokenizers library reads')
  fails("data.kind='tokens' has no text to encode", kind='tokens')
