"""Router options moved from flat moe.* fields to moe.router_options.<router>:
old configs and flags get one line naming the new place, and checkpoints
saved with the old names still resume, evaluate and trace."""

import json
import pathlib
import subprocess
import sys

import pytest

from experiments import ablation
from moe_jax.config import default_config, renames
from moe_jax.errors import UserInputError
from moe_jax.train import saved_config
from testlib import REPO, multi_device_env

# The flat names as checkpoints and configs held them before the registry.
OLD_TO_NEW = {
    'second_policy': 'gshard.second_policy',
    'second_policy_eval': 'gshard.second_policy_eval',
    'renormalize_top_k': 'topk.renormalize',
    'bias_update_rate': 'sigmoid.bias_update_rate',
    'importance_weight': 'noisy_topk.importance_weight',
    'load_cv_weight': 'noisy_topk.load_cv_weight',
    'slots_per_expert': 'soft.slots_per_expert',
}


def _old_layout(config: dict) -> dict:
  """A config dict as a checkpoint saved it before the move."""
  old = json.loads(json.dumps(config))
  options = old['moe'].pop('router_options')
  for name, new in OLD_TO_NEW.items():
    router, field = new.split('.')
    old['moe'][name] = options[router][field]
  return old


def test_the_map_lists_every_moved_field():
  assert renames.moved_fields() == {
      f'moe.{old}': f'moe.router_options.{new}'
      for old, new in OLD_TO_NEW.items()}


def test_an_old_checkpoint_config_compares_equal_and_rebuilds():
  today = default_config.get_default_config()
  today.moe.router = 'sigmoid'
  today.moe.top_k = 2
  today.moe.router_options.sigmoid.bias_update_rate = 1e-3
  old = _old_layout(today.to_dict())
  assert old['moe']['bias_update_rate'] == 1e-3
  assert saved_config.config_differences(old, today.to_dict()) == []
  # A real difference is still one, under today's name.
  changed = today.to_dict()
  changed['moe']['router_options']['sigmoid']['bias_update_rate'] = 0.0
  assert saved_config.config_differences(old, changed) == [
      'moe.router_options.sigmoid.bias_update_rate: 0.001 -> 0.0']
  rebuilt = saved_config.saved_config(old)
  assert rebuilt.moe.router_options.sigmoid.bias_update_rate == 1e-3
  assert 'bias_update_rate' not in rebuilt.moe


def test_old_field_in_a_config_file_is_one_line_naming_the_new_one():
  c = default_config.get_default_config()
  with pytest.raises(UserInputError,
                     match=r'moe\.router_options\.soft\.slots_per_expert') as e:
    c.moe.slots_per_expert = 2
  assert '\n' not in str(e.value)
  with pytest.raises(UserInputError, match='router_options.topk.renormalize'):
    c.moe.update({'renormalize_top_k': False})


def test_old_field_in_an_ablation_variant_names_the_new_one():
  with pytest.raises(KeyError, match='router_options.gshard.second_policy'):
    ablation.apply_overrides(default_config.get_default_config(),
                             {'moe.second_policy': 'all'})


def _main(*args, env=None):
  return subprocess.run([sys.executable, '-m', 'moe_jax.main', *args],
                        cwd=REPO, capture_output=True, text=True, timeout=400,
                        env=env or multi_device_env(1, fast_compile=True))


def test_cli_names_the_new_field_for_an_old_flag_or_file(tmp_path):
  proc = _main('--config=configs/gshard_top2.py:tiny',
               f'--workdir={tmp_path / "w"}', '--config.moe.second_policy=all')
  assert proc.returncode == 2
  assert proc.stderr.strip() == (
      'error: ' + renames.moved_message('moe.second_policy'))
  old_file = tmp_path / 'old.py'
  old_file.write_text(
      'from moe_jax.config.default_config import get_default_config\n'
      'def get_config(arg=None):\n'
      '  c = get_default_config()\n'
      "  c.moe.router = 'soft'\n"
      '  c.moe.slots_per_expert = 2\n'
      '  return c\n')
  proc = _main(f'--config={old_file}', f'--workdir={tmp_path / "w"}')
  assert proc.returncode == 2
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and 'moe.router_options.soft.slots_per_expert' in (
      lines[0]), proc.stderr
  assert not (tmp_path / 'w').exists()


@pytest.mark.slow
def test_old_checkpoint_resumes_evaluates_and_traces(tmp_path):
  workdir = tmp_path / 'run'
  flags = ('--config=configs/sigmoid_loss_free.py:tiny',
           f'--workdir={workdir}', '--config.train.num_steps=3',
           '--config.train.checkpoint_every=3')
  assert _main(*flags).returncode == 0
  # Rewrite the saved config as the code before the move wrote it.
  meta = workdir / 'checkpoints' / '3' / 'meta' / 'metadata'
  saved = json.loads(meta.read_text())
  saved['config'] = _old_layout(saved['config'])
  meta.write_text(json.dumps(saved))

  evaluated = subprocess.run(
      [sys.executable, '-m', 'moe_jax.evaluate', f'--workdir={workdir}'],
      cwd=REPO, capture_output=True, text=True, timeout=400,
      env=multi_device_env(1, fast_compile=True))
  assert evaluated.returncode == 0, evaluated.stderr[-2000:]

  from moe_jax.analysis import trace as trace_lib  # pylint: disable=g-import-not-at-top
  config = saved_config.saved_config(saved['config'])
  trace = trace_lib.trace_checkpoint(config, str(workdir))
  assert trace.meta['router'] == 'sigmoid' and trace.num_tokens > 0

  # The same config, today's names, trains on from the old checkpoint.
  resumed = _main(*flags[:2], '--config.train.num_steps=4')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  steps = [json.loads(line)['step'] for line in
           (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert max(steps) == 4


def test_other_routers_options_do_not_make_configs_differ():
  # A router registered in one process only (a plug-in, a test's) adds its
  # section to that process's configs; the chosen router's options alone
  # decide what a checkpoint means.
  today = default_config.get_default_config().to_dict()
  other = json.loads(json.dumps(today))
  other['moe']['router_options']['plugin_only'] = {'salt': 0}
  assert saved_config.config_differences(other, today) == []
  assert saved_config.config_differences(today, other) == []
  assert 'plugin_only' not in saved_config.saved_config(other).moe.router_options
