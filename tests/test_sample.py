"""A trained byte model continues its memorised text, through the API and
through `python -m moe_jax.sample`; the command's bad input is one line.

One module-wide run trains a `:tiny` switch_top1 for 150 steps on a single
repeated sentence, which it learns by heart (validation loss ~0.1
nats/byte), so its greedy continuation is known.
"""

import contextlib
import io
import json
import os
import subprocess
import sys

import pytest

import testlib
from moe_jax import sample
from moe_jax.errors import UserInputError
from moe_jax.generation import Sampling, generate, load
from moe_jax.train import trainer

TEXT = 'the quick brown fox jumps over the lazy dog. '


@pytest.fixture(scope='module', autouse=True)
def _cache(compilation_cache_on):
  """The command's subprocess reuses the decode loop compiled in-process."""
  return compilation_cache_on


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp('sample')
  (root / 'text.txt').write_text(TEXT * 400)
  steps = 150
  config = testlib.tiny_config('configs/switch_top1.py', {
      'data.kind': 'text', 'data.path': str(root / 'text.txt'),
      'data.split': 'tail', 'train.num_steps': steps,
      'train.log_every': steps, 'train.eval_every': steps,
      'train.checkpoint_every': steps, 'optim.warmup_steps': 10,
      'train.eval_batches': 1, 'train.final_eval_batches': 1})
  with contextlib.redirect_stdout(io.StringIO()):
    trainer.train_and_evaluate(config, str(root / 'run'))
  return root / 'run'


@pytest.fixture(scope='module')
def loaded(workdir):
  return load.from_workdir(str(workdir))


def test_a_trained_model_continues_its_text(loaded):
  prompts = ['the quick ', 'lazy ']  # Two lengths in one batch.
  out = generate(loaded.model, [loaded.codec.encode(p) for p in prompts],
                 max_new_tokens=20)  # 10 + 20 bytes fit max_len = 32.
  texts = [loaded.codec.decode(row) for row in out.tokens]
  assert texts == ['brown fox jumps over', 'dog. the quick brown']


def test_sample_command_prints_the_continuation(workdir, _cache):
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=_cache,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
  proc = subprocess.run(
      [sys.executable, '-m', 'moe_jax.sample', '--workdir', str(workdir),
       '--prompt', 'the quick ', '--temperature', '0', '--max-new-tokens',
       '20', '--num-samples', '2'],
      cwd=testlib.REPO, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert lines == ['--- sample 1 ---', 'the quick brown fox jumps over',
                   '--- sample 2 ---', 'the quick brown fox jumps over'], lines


def _main(capsys, *argv):
  code = sample.main(list(argv))
  err = capsys.readouterr().err
  return code, err


@pytest.mark.parametrize('argv,match', [
    (['--workdir', '/nonexistent/run'], 'holds no checkpoints folder'),
    (['--hf', '/nonexistent/hf'], "no folder at '/nonexistent/hf'"),
    (['--workdir', 'x', '--num-samples', '0'], '--num-samples=0'),
    (['--workdir', 'x', '--top-p', '0'], 'top_p=0.0'),
    (['--workdir', 'x', '--temperature', '-1'], 'temperature=-1.0'),
])
def test_bad_input_is_one_error_line(capsys, argv, match):
  code, err = _main(capsys, *argv, '--prompt', 'def ')
  assert code == 2 and err.startswith('error: ') and match in err, err
  assert err.count('\n') == 1, err


def test_an_hf_folder_needs_its_tokenizer(capsys, tmp_path):
  (tmp_path / 'config.json').write_text(json.dumps({'model_type': 'mixtral'}))
  code, err = _main(capsys, '--hf', str(tmp_path), '--prompt', 'hi')
  assert code == 2 and 'has no tokenizer.json' in err and \
      err.count('\n') == 1, err


def test_empty_prompt_is_one_error_line(capsys, workdir):
  code, err = _main(capsys, '--workdir', str(workdir), '--prompt', '')
  assert code == 2 and '--prompt is empty' in err and err.count('\n') == 1


def test_a_prompt_longer_than_the_model_is_refused(loaded):
  # The command's default length leaves no room: refused, not cut.
  with pytest.raises(UserInputError, match='max_len=32') as e:
    sample.sample_text(loaded, 'a' * 40, max_new_tokens=None,
                       sampling=Sampling(), seed=0, num_samples=1)
  assert '\n' not in str(e.value)
