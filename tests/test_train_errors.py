"""Bad input to the CLI: one `error:` line, a non-zero exit, nothing touched.

Every case runs `python -m moe_jax.main` against one shared workdir that
already holds a real checkpoint and metrics, and checks that the failed run
left every file there exactly as it was.
"""

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from moe_jax import evaluate as moe_evaluate
from moe_jax import inspect
from moe_jax.errors import UserInputError
from moe_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAKESPEARE = REPO.parent / 'shared' / 'data' / 'tinyshakespeare.txt'
CONFIG_FILE = 'configs/switch_top1.py'


@pytest.fixture(scope='module', autouse=True)
def _cache(compilation_cache_on):
  del compilation_cache_on  # Active for the whole module.


def _snapshot(directory):
  """{relative path: (size, mtime_ns, sha256)} of every file, and the dirs."""
  directory = pathlib.Path(directory)
  listing = {}
  for path in sorted(directory.rglob('*')):
    rel = path.relative_to(directory).as_posix()
    if path.is_dir():
      listing[rel] = ('dir', path.stat().st_mtime_ns)
    else:
      stat = path.stat()
      listing[rel] = (stat.st_size, stat.st_mtime_ns,
                      hashlib.sha256(path.read_bytes()).hexdigest())
  return listing


@pytest.fixture(scope='module')
def trained_workdir(tmp_path_factory):
  """A workdir with the checkpoints and metrics of a finished tiny run."""
  spec = importlib.util.spec_from_file_location('_errors_config',
                                                REPO / CONFIG_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  workdir = tmp_path_factory.mktemp('trained')
  with contextlib.redirect_stdout(io.StringIO()):
    trainer.train_and_evaluate(module.get_config('tiny'), str(workdir))
  assert (workdir / 'checkpoints' / '6').is_dir()
  return workdir


def _run_cli(workdir, *flags):
  return subprocess.run(
      [sys.executable, '-m', 'moe_jax.main', f'--config={CONFIG_FILE}:tiny',
       f'--workdir={workdir}', *flags],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


def _assert_one_error_line(result, *needles):
  assert result.returncode == 2, (result.returncode, result.stderr)
  lines = result.stderr.splitlines()
  assert len(lines) == 1, result.stderr
  assert lines[0].startswith('error: '), lines[0]
  for needle in needles:
    assert needle in lines[0], (needle, lines[0])
  # Nothing ran: no progress line, no model summary.
  assert 'model:' not in result.stdout


@pytest.fixture(scope='module')
def data_paths(tmp_path_factory):
  """Paths the cases name: {missing} does not exist, {empty} has 0 bytes."""
  directory = tmp_path_factory.mktemp('data')
  (directory / 'empty.txt').write_bytes(b'')
  return {'missing': str(directory / 'missing.txt'),
          'empty': str(directory / 'empty.txt')}


# Flags of each kind of bad input, and words its error line must contain.
CASES = {
    'missing_data_file': (
        ['--config.data.kind=text', '--config.data.path={missing}'],
        ['{missing}', 'does not exist']),
    'empty_data_file': (
        ['--config.data.kind=text', '--config.data.path={empty}'],
        ['{empty}', 'empty']),
    'unknown_field': (['--config.moe.num_expert=3'], ['num_expert']),
    'top_k_above_num_experts': (
        ['--config.moe.router=topk', '--config.moe.top_k=9'],
        ['top_k=9', 'num_experts=8']),
    'zero_capacity_factor': (['--config.moe.capacity_factor=0'],
                             ['capacity_factor=0.0', '> 0']),
    'negative_eval_capacity_factor': (
        ['--config.moe.eval_capacity_factor=-1'],
        ['eval_capacity_factor=-1.0', '> 0']),
    'incompatible_checkpoint': (['--config.moe.num_experts=4'],
                                ['moe.num_experts', '8 -> 4']),
    # The optimizer section is checked like the others.
    'nan_learning_rate': (['--config.optim.learning_rate=nan'],
                          ['optim.learning_rate=nan', 'finite and > 0']),
    'inf_learning_rate': (['--config.optim.learning_rate=inf'],
                          ['optim.learning_rate=inf']),
    'zero_learning_rate': (['--config.optim.learning_rate=0'],
                           ['optim.learning_rate=0']),
    'negative_warmup': (['--config.optim.warmup_steps=-1'],
                        ['optim.warmup_steps=-1', '>= 0']),
    'final_lr_fraction_above_one': (['--config.optim.final_lr_fraction=2'],
                                    ['optim.final_lr_fraction=2', '[0, 1]']),
    'negative_weight_decay': (['--config.optim.weight_decay=-0.1'],
                              ['optim.weight_decay=-0.1']),
    'b2_of_one': (['--config.optim.b2=1'], ['optim.b2=1', '[0, 1)']),
    'zero_grad_clip': (['--config.optim.grad_clip=0'], ['optim.grad_clip=0']),
    # A path with the default kind would train on the stdlib and ignore it.
    'data_path_without_kind_text': (
        ['--config.data.path={empty}'], ['data.path=', 'data.kind=text']),
    # The workdir's checkpoint (step 6) is past num_steps: training would do
    # nothing and report step-6 parameters as the final ones.
    'checkpoint_past_num_steps': (['--config.train.num_steps=4'],
                                  ['step 6', 'num_steps=4']),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_fails_with_one_line_and_touches_nothing(
    case, trained_workdir, data_paths):
  flags, needles = ([x.format(**data_paths) for x in xs] for xs in CASES[case])
  before = _snapshot(trained_workdir)
  result = _run_cli(trained_workdir, *flags)
  _assert_one_error_line(result, *needles)
  assert _snapshot(trained_workdir) == before


@pytest.mark.slow
@pytest.mark.parametrize('seq_len, split', [
    (2_000_000, 'train'),  # Longer than the whole file.
    (20_000, 'val'),  # Fits the training split but not the validation one.
])
def test_sequence_longer_than_the_data(seq_len, split, trained_workdir):
  if not SHAKESPEARE.is_file():
    pytest.skip(f'{SHAKESPEARE} is absent')
  before = _snapshot(trained_workdir)
  result = _run_cli(
      trained_workdir, '--config.data.kind=text',
      f'--config.data.path={SHAKESPEARE}', '--config.data.max_bytes=300000',
      f'--config.seq_len={seq_len}')
  _assert_one_error_line(result, f'L={seq_len}', f'{split} split')
  assert _snapshot(trained_workdir) == before


# Flags refused on a fresh workdir, and words of the error line. The last
# two were found after start-up and left an empty checkpoints/ folder.
FRESH_CASES = {
    'capacity_factor': (['--config.moe.capacity_factor=-0.5'],
                        ['capacity_factor=-0.5']),
    'group_size': (['--config.moe.group_size=7'],
                   ['moe.group_size=7', 'divide the 128 tokens']),
    'peak_flops': (['--config.train.peak_flops_per_device=-1.0'],
                   ['train.peak_flops_per_device=-1.0', '>= 0']),
    'lora_target': (['--config.lora.rank=2', '--config.train.init_from={base}',
                     "--config.lora.targets=('shared_experts',)"],
                    ['select no parameter']),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', list(FRESH_CASES))
def test_bad_input_creates_no_workdir(case, trained_workdir, tmp_path):
  flags, needles = FRESH_CASES[case]
  workdir = tmp_path / 'new_run'
  result = _run_cli(workdir, *(f.format(base=trained_workdir) for f in flags))
  _assert_one_error_line(result, *needles)
  assert not workdir.exists()


def _run_cli_config(config, workdir):
  return subprocess.run(
      [sys.executable, '-m', 'moe_jax.main', f'--config={config}',
       f'--workdir={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


@pytest.mark.slow
def test_config_file_with_a_syntax_error(tmp_path):
  config = tmp_path / 'broken.py'
  config.write_text('def get_config(:\n  pass\n')
  result = _run_cli_config(config, tmp_path / 'run')
  _assert_one_error_line(result, 'broken.py', 'line 1')
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_workdir_that_is_a_file(tmp_path):
  workdir = tmp_path / 'a_file'
  workdir.write_text('not a directory')
  result = _run_cli(workdir)
  _assert_one_error_line(result, str(workdir), 'is a file')
  assert workdir.read_text() == 'not a directory'


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() == 0,
                    reason='root ignores permissions, so nothing is read-only')
@pytest.mark.parametrize('holds_checkpoint', [False, True])
def test_read_only_workdir(holds_checkpoint, trained_workdir, tmp_path):
  workdir = tmp_path / 'run'
  if holds_checkpoint:
    shutil.copytree(trained_workdir, workdir)
  else:
    workdir.mkdir()
  before = _snapshot(workdir)
  workdir.chmod(0o555)
  try:
    result = _run_cli(workdir)
  finally:
    workdir.chmod(0o755)
  _assert_one_error_line(result, str(workdir), 'not writable')
  assert _snapshot(workdir) == before


# Config files that fail while loading: each was a traceback (or, for a
# suffix typo, a silent full-size run).
CONFIG_FILES = {
    # The preset raised through ml_collections, which pastes the traceback
    # into the message.
    'preset_suffix_typo': ('configs/presets/mixtral_8x7b.py:tinyy', None,
                           ['unknown config suffix :tinyy', ':tiny']),
    'missing_module': ('{tmp}/imports.py', 'import no_such_module_xyz\n',
                       ['imports.py', 'no_such_module_xyz']),
    'wrong_return_type': ('{tmp}/returns.py',
                          'def get_config(arg=None):\n  return {"a": 1}\n',
                          ['returns.py', 'returned dict',
                           'ml_collections.ConfigDict']),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CONFIG_FILES))
def test_config_file_errors_are_one_line(case, tmp_path):
  spec, text, needles = CONFIG_FILES[case]
  spec = spec.format(tmp=tmp_path)
  if text is not None:
    pathlib.Path(spec).write_text(text)
  result = _run_cli_config(spec, tmp_path / 'run')
  _assert_one_error_line(result, *needles)
  assert not (tmp_path / 'run').exists()


def test_config_suffix_typo_is_refused():
  # A typo used to train (and inspect) the full-size model.
  for suffix in ('tinyy', 'Tiny'):
    with pytest.raises(UserInputError, match=f'unknown config suffix :{suffix}'
                       '; use :tiny or no suffix'):
      inspect.load_config_file(f'{CONFIG_FILE}:{suffix}')
  assert inspect.load_config_file(f'{CONFIG_FILE}:tiny').seq_len == 32


@pytest.mark.slow
def test_evaluate_command_prints_the_runs_eval_metrics(trained_workdir,
                                                       tmp_path, capsys):
  result = subprocess.run(
      [sys.executable, '-m', 'moe_jax.evaluate',
       f'--workdir={trained_workdir}'], cwd=REPO, capture_output=True,
      text=True, timeout=120, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert result.returncode == 0, result.stderr
  printed = dict(line.split() for line in result.stdout.splitlines()[1:])
  logged = [json.loads(line) for line in
            (trained_workdir / 'metrics.jsonl').read_text().splitlines()]
  # It scores what the run's final evaluation scored: the whole split.
  (final,) = [r for r in logged if 'final_eval/loss' in r]
  assert result.stdout.startswith('checkpoint: step 6 of ')
  assert {'final_' + k for k in printed} == {
      k for k in final if k.startswith('final_eval/')}
  for name, value in printed.items():
    assert float(value) == pytest.approx(final['final_' + name],
                                         rel=1e-5), name
  # A workdir without checkpoints: one line, nothing created.
  assert moe_evaluate.main(['--workdir', str(tmp_path / 'none')]) == 2
  assert capsys.readouterr().err.startswith(
      f'error: {tmp_path / "none"} holds no checkpoints folder')
  assert not (tmp_path / 'none').exists()
