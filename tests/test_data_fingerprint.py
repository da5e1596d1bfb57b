"""The data fingerprint: a resume on changed data is refused, not trained on."""

import contextlib
import io
import json
import os

import numpy as np
import pytest

from moe_jax import data
from moe_jax.data import fingerprint
from moe_jax.errors import UserInputError
from moe_jax.train import trainer
from tests import testlib

TEXT = 'def add(a, b):\n    return a + b\n\nThe quick brown fox.\n' * 300


def test_an_edited_text_or_a_replaced_tokenizer_changes_the_fingerprint(
    tmp_path):
  (tmp_path / 'my.txt').write_text(TEXT)
  (tmp_path / 'tokenizer.json').write_text('{"version": "1"}')
  fp = lambda: fingerprint.data_fingerprint(
      data.load_corpus('text', str(tmp_path / 'my.txt')),
      str(tmp_path / 'tokenizer.json'))
  before = fp()
  assert fingerprint.data_differences(before, fp()) == []
  assert json.loads(json.dumps(before)) == before  # Checkpoint meta is JSON.

  (tmp_path / 'my.txt').write_text(TEXT.replace('fox', 'cat'))  # Same size.
  assert fingerprint.data_differences(before, fp()) == [
      'the ids of my.txt changed (16,200 uint8 -> 16,200 uint8, other '
      'content)']
  (tmp_path / 'my.txt').write_text(TEXT)
  (tmp_path / 'tokenizer.json').write_text('{"version": "2"}')
  assert fingerprint.data_differences(before, fp()) == [
      'the tokenizer file changed']


def test_a_token_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
  path, cache = tmp_path / 'train.bin', tmp_path / 'cache'
  np.arange(1000, dtype=np.uint16).tofile(path)
  fp = lambda: fingerprint.data_fingerprint(
      data.load_corpus('tokens', str(path)), cache_dir=cache)
  before = fp()
  hashed = []
  real = fingerprint._sha256_of_array  # pylint: disable=protected-access
  monkeypatch.setattr(fingerprint, '_sha256_of_array',
                      lambda ids: hashed.append(len(ids)) or real(ids))
  assert fp() == before and hashed == []  # From the cache: no re-read.
  # Regenerated in place with the same size: a new mtime, a new hash.
  np.arange(1, 1001, dtype=np.uint16).tofile(path)
  os.utime(path, ns=(1, 1))
  assert fingerprint.data_differences(before, fp()) and hashed == [1000]


def _train(config, workdir):
  with contextlib.redirect_stdout(io.StringIO()) as out:
    trainer.train_and_evaluate(config, str(workdir))
  return out.getvalue()


@pytest.mark.slow
def test_resume_on_edited_data_is_refused(tmp_path, compilation_cache_on):
  del compilation_cache_on
  (tmp_path / 'my.txt').write_text(TEXT)
  steps = lambda n: {'data.kind': 'text', 'data.path': str(tmp_path / 'my.txt'),
                     'train.num_steps': n, 'train.checkpoint_every': 2,
                     'train.eval_every': 2}
  config = lambda n: testlib.tiny_config('configs/switch_top1.py', steps(n))
  _train(config(2), tmp_path / 'run')
  meta_file = tmp_path / 'run' / 'checkpoints' / '2' / 'meta' / 'metadata'
  assert json.loads(meta_file.read_text())['data']['count'] == len(TEXT)

  (tmp_path / 'my.txt').write_text(TEXT.replace('fox', 'cat'))
  with pytest.raises(UserInputError, match=r'holds a checkpoint \(step 2\) '
                     r'trained on other data \(the ids of my.txt changed'):
    _train(config(4), tmp_path / 'run')
  assert testlib.checkpoint_steps(tmp_path / 'run') == [2]

  # A checkpoint saved before fingerprints existed still resumes, with a note.
  (tmp_path / 'my.txt').write_text(TEXT)
  meta = json.loads(meta_file.read_text())
  del meta['data']
  meta_file.write_text(json.dumps(meta))
  out = _train(config(4), tmp_path / 'run')
  assert 'note: the checkpoint at step 2 predates data fingerprints' in out
  assert 'resumed from step 2' in out
