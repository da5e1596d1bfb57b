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


def test_sample_command_on_an_hf_folder(tmp_path, capsys):
  """An exported Mixtral-style folder plus a word-level tokenizer.json: the
  command prints the prompt and the decoded greedy continuation."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from tokenizers import Tokenizer, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
  from moe_jax.convert import hf_moe  # pylint: disable=g-import-not-at-top
  from moe_jax.core.config import MoEConfig  # pylint: disable=g-import-not-at-top
  from moe_jax.models import ModelConfig, TransformerLM  # pylint: disable=g-import-not-at-top

  config = ModelConfig(
      vocab_size=40, d_model=16, num_layers=2, num_heads=4, num_kv_heads=2,
      d_ff=12, max_len=64, moe_every=1, norm_eps=1e-5,
      moe=MoEConfig(num_experts=4, top_k=2, d_ff=12, router='topk',
                    expert_type='swiglu', dispatcher='dropless',
                    z_loss_weight=0.0))
  shapes = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: TransformerLM(config, rngs=nnx.Rngs(0))), nnx.Param))
  rng = np.random.default_rng(0)
  hf_moe.export_checkpoint(config, jax.tree.map(
      lambda s: rng.normal(0, 0.3, s.shape).astype(np.float32), shapes),
                           tmp_path)
  tok = Tokenizer(models.WordLevel({f'w{i}': i for i in range(40)},
                                   unk_token='w0'))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / 'tokenizer.json'))

  code = sample.main(['--hf', str(tmp_path), '--prompt', 'w5 w17 w3',
                      '--temperature', '0', '--max-new-tokens', '6'])
  out = capsys.readouterr().out
  eos = json.loads((tmp_path / 'config.json').read_text()).get(
      'eos_token_id')
  ref = generate(hf_moe.load_model(tmp_path), [[5, 17, 3]], max_new_tokens=6,
                 stop_token=eos)
  new = ref.tokens[0, :ref.lengths[0]].tolist()
  assert code == 0 and len(set(new)) > 1
  assert out == 'w5 w17 w3' + tok.decode(new) + '\n'
