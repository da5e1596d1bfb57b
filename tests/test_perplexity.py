"""`python -m moe_jax.evaluate --hf FOLDER --data TEXT` (moe_jax/perplexity.py):
an exported tiny model plus a word-level tokenizer.json; the windows by
hand, the dropless loss against a direct computation, capacity that cannot
drop against dropless, a tight one that drops, and one-line errors."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from moe_jax import evaluate, perplexity
from moe_jax.convert import hf_moe
from test_convert_hf import _params, mixtral_like

V = 40  # The model's vocabulary (mixtral_like).
SEQ = 16


def _tokenizer(folder, size):
  tok = Tokenizer(models.WordLevel({f'w{i}': i for i in range(size)},
                                   unk_token='w0'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(folder / 'tokenizer.json'))


@pytest.fixture(scope='module')
def folder(tmp_path_factory):
  """(model folder, text file, the text's ids)."""
  path = tmp_path_factory.mktemp('ppl')
  config = mixtral_like()
  hf_moe.export_checkpoint(config, _params(config), path / 'model')
  _tokenizer(path / 'model', V)
  ids = np.random.default_rng(0).integers(0, V, 3 * SEQ + 5)
  (path / 'text.txt').write_text(' '.join(f'w{i}' for i in ids))
  return path / 'model', path / 'text.txt', ids


def test_windows_by_hand():
  inputs, targets = perplexity.windows(np.arange(11), 4)
  np.testing.assert_array_equal(inputs, [[0, 1, 2, 3], [4, 5, 6, 7]])
  np.testing.assert_array_equal(targets, [[1, 2, 3, 4], [5, 6, 7, 8]])
  # A text shorter than a window is one window of all of it.
  inputs, targets = perplexity.windows(np.arange(3), 4)
  np.testing.assert_array_equal(inputs, [[0, 1]])
  np.testing.assert_array_equal(targets, [[1, 2]])


@pytest.fixture(scope='module')
def scores(folder):
  model, text, _ = folder
  # cf 0.25: C = max(ceil(2·16·0.25/4), min_capacity 4) = 4 slots per
  # expert, 16 for a window's 32 choices; cf 2 = E/K: C = 16 = S, so nothing
  # can drop.
  return perplexity.score_folder(str(model), str(text), [0.25, 2.0],
                                 seq_len=SEQ, batch_size=2)


def test_dropless_loss_equals_a_direct_computation(folder, scores):
  model_dir, _, ids = folder
  inputs, targets = perplexity.windows(ids, SEQ)
  assert inputs.shape == (3, SEQ)  # 3·16 + 5 ids: three whole windows.
  logits, _ = hf_moe.load_model(model_dir)(inputs, train=False, key=None)
  logits = np.asarray(logits, np.float64)
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  want = -np.take_along_axis(logp, targets[..., None], -1).mean()
  dropless = scores[0]
  assert dropless.setting == 'dropless' and dropless.tokens == 3 * SEQ
  assert dropless.loss == pytest.approx(want, rel=1e-5)
  assert dropless.perplexity == pytest.approx(np.exp(want), rel=1e-5)
  assert dropless.dropped_fraction == 0


def test_capacity_counterfactual(scores):
  dropless, tight, roomy = scores
  assert [s.setting for s in scores] == [
      'dropless', 'capacity factor 0.25', 'capacity factor 2']
  # Room for every choice: the index dispatcher gives dropless' numbers.
  assert roomy.dropped_fraction == 0
  assert roomy.loss == pytest.approx(dropless.loss, rel=1e-5)
  # 16 slots for 32 choices: at least half dropped.
  assert tight.dropped_fraction >= 0.5
  assert abs(tight.loss - dropless.loss) > 1e-3


def test_command_prints_one_line_per_setting(folder, capsys):
  model, text, _ = folder
  code = evaluate.main(['--hf', str(model), '--data', str(text),
                        '--eval_capacity_factor', '2', '--seq_len', str(SEQ),
                        '--max_tokens', str(SEQ + 1)])
  lines = capsys.readouterr().out.splitlines()
  assert code == 0
  assert lines[0].endswith(f'windows of up to {SEQ} tokens:')
  assert lines[1].startswith('dropless: loss ')
  assert lines[2].startswith('capacity factor 2: loss ')
  assert lines[1].endswith(f'({SEQ} tokens)') and len(lines) == 3


def _error(capsys, *argv):
  assert evaluate.main(list(argv)) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  return err


def test_bad_input_is_one_line(folder, tmp_path, capsys):
  model, text, _ = folder
  bare = tmp_path / 'bare'
  hf_moe.export_checkpoint(mixtral_like(), _params(mixtral_like()), bare)
  assert 'has no tokenizer.json' in _error(
      capsys, '--hf', str(bare), '--data', str(text))
  _tokenizer(bare, V + 10)
  assert ("the tokenizer.json vocabulary=50 must fit in the model's "
          'vocab_size=40') in _error(capsys, '--hf', str(bare), '--data',
                                     str(text))
  assert 'no text file at' in _error(
      capsys, '--hf', str(model), '--data', str(tmp_path / 'missing.txt'))
  assert '--hf needs --data' in _error(capsys, '--hf', str(model))
  assert "--eval_capacity_factor='1,x' is not a number" in _error(
      capsys, '--hf', str(model), '--data', str(text),
      '--eval_capacity_factor', '1,x')
  assert '--seq_len applies only with --hf' in _error(
      capsys, '--workdir', str(tmp_path), '--seq_len', '8')
  assert '--seq_len=65 must be at most max_position_embeddings=64' in _error(
      capsys, '--hf', str(model), '--data', str(text), '--seq_len', '65')
