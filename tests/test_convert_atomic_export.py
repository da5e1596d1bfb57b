"""Hugging Face exports are all or nothing (moe_jax/files.py atomic_folder,
used by hf_moe.export_checkpoint): a writer failing half-way leaves no
folder, or the earlier export exactly as it was, and nothing beside it."""

import os
import pathlib

import pytest

from moe_jax.convert import hf_moe, safetensors_dir
from moe_jax.errors import UserInputError
from moe_jax.files import atomic_folder
from test_convert_hf import _params, mixtral_like

CONFIG = mixtral_like()
PARAMS = _params(CONFIG)
# Small shards, so that an export writes several files and can fail between.
_SHARD = 20_000


def _snapshot(folder: pathlib.Path) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _fail_on_second_shard(monkeypatch):
  real, calls = safetensors_dir.save_file, []

  def save_file(*args, **kwargs):
    calls.append(args[1])
    if len(calls) == 2:
      raise OSError('disk full (injected)')
    return real(*args, **kwargs)

  monkeypatch.setattr(safetensors_dir, 'save_file', save_file)
  return calls


def test_a_failed_export_leaves_no_folder(tmp_path, monkeypatch):
  calls = _fail_on_second_shard(monkeypatch)
  with pytest.raises(OSError, match='injected'):
    hf_moe.export_checkpoint(CONFIG, PARAMS, tmp_path / 'out',
                             max_shard_bytes=_SHARD)
  assert len(calls) == 2  # It did fail half-way, with one shard written.
  assert list(tmp_path.iterdir()) == []


def test_a_failed_export_keeps_the_earlier_one(tmp_path, monkeypatch):
  out = tmp_path / 'out'
  hf_moe.export_checkpoint(CONFIG, PARAMS, out)
  (out / 'tokenizer.json').write_text('{}')
  before = _snapshot(out)
  _fail_on_second_shard(monkeypatch)
  with pytest.raises(OSError, match='injected'):
    hf_moe.export_checkpoint(CONFIG, PARAMS, out, max_shard_bytes=_SHARD)
  assert _snapshot(out) == before
  assert [p.name for p in tmp_path.iterdir()] == ['out']


def test_a_re_export_replaces_the_tensors_and_keeps_other_files(tmp_path):
  out = tmp_path / 'out'
  sharded = hf_moe.export_checkpoint(CONFIG, PARAMS, out,
                                     max_shard_bytes=_SHARD)
  assert len(sharded) >= 2
  (out / 'tokenizer.json').write_text('{"kept": true}')
  assert hf_moe.export_checkpoint(CONFIG, PARAMS, out) == ['model.safetensors']
  # The earlier shards and their index are gone, not mixed with the new file.
  assert sorted(p.name for p in out.iterdir()) == [
      'config.json', 'model.safetensors', 'tokenizer.json']
  assert (out / 'tokenizer.json').read_text() == '{"kept": true}'
  assert [p.name for p in tmp_path.iterdir()] == ['out']
  config, _ = hf_moe.import_checkpoint(out)
  assert config == hf_moe.config_from_hf(hf_moe.config_to_hf(CONFIG))


def test_a_folder_that_is_not_an_export_is_refused(tmp_path):
  (tmp_path / 'notes.txt').write_text('mine')
  with pytest.raises(UserInputError, match='holds files but no config.json'):
    hf_moe.export_checkpoint(CONFIG, PARAMS, tmp_path)
  assert _snapshot(tmp_path) == {'notes.txt': b'mine'}
  with pytest.raises(UserInputError, match='is a file; pass a folder'):
    hf_moe.export_checkpoint(CONFIG, PARAMS, tmp_path / 'notes.txt')


def test_a_failed_swap_puts_the_old_folder_back(tmp_path, monkeypatch):
  out = tmp_path / 'out'
  out.mkdir()
  (out / 'a').write_text('old')
  real = os.replace

  def replace(src, dst):  # The second rename (new folder into place) fails.
    if pathlib.Path(dst) == out and '.tmp' in pathlib.Path(src).name:
      raise OSError('rename failed (injected)')
    return real(src, dst)

  monkeypatch.setattr(os, 'replace', replace)
  with pytest.raises(OSError, match='injected'):
    with atomic_folder(out) as tmp:
      (tmp / 'a').write_text('new')
  monkeypatch.setattr(os, 'replace', real)
  assert _snapshot(out) == {'a': b'old'}
  assert [p.name for p in tmp_path.iterdir()] == ['out']
