"""What every command-line entry point shares: one-line errors, exit 2."""

from __future__ import annotations

import re
import sys
from typing import Any

import ml_collections
from absl import flags
from ml_collections import config_flags

from moe_jax.errors import UserInputError


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def one_line(error: BaseException) -> str:
  # ml_collections embeds escaped newlines and quotes in its KeyErrors.
  text = str(error).replace('\\n', ' ').replace("\\'", '')
  return ' '.join(text.split())


def _flag_error(e: BaseException) -> str:
  """One line for an error of absl's or ml_collections' flag parsing."""
  message = one_line(e)
  if isinstance(e, (AttributeError, KeyError)):
    message = f'unknown config field {message.strip(chr(39))}'
  return message


def config_overrides(items, config: ml_collections.ConfigDict
                     ) -> dict[str, Any]:
  """`--config.<field>=<value>` items parsed as ml_collections.config_flags
  parses them for `python -m moe_jax.main`: each value takes the type of
  `config`'s field.

  Args:
    items: the command line's override arguments.
    config: a config with every field (it receives the overrides).

  Returns:
    The overrides as a flat dict, e.g. {'moe.top_k': 2}.

  Raises:
    UserInputError: an unknown field or a value of the wrong type, in one
      line.
  """
  argv = ['overrides', *items]
  flag_values = flags.FlagValues()  # Its own: main()'s flags stay apart.
  try:
    config_flags.DEFINE_config_dict('config', config, flag_values=flag_values,
                                    sys_argv=argv)
    flag_values(argv)
    return dict(config_flags.get_override_values(flag_values['config']))
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    raise UserInputError(_flag_error(e)) from None


def _config_path(argv) -> str:
  """The --config flag's file, for messages about the file itself."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1].split(':')[0]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1].split(':')[0]
  return 'the config file'


def _raised_in_config(message: str) -> str | None:
  """The last line of the traceback that ml_collections pastes into the
  message of a ValueError or TypeError raised by get_config, without its
  'module.ErrorType: ' prefix; None if `message` holds no such traceback."""
  if 'Error whilst parsing config file' not in message:
    return None
  last = [line for line in message.splitlines() if line.strip()][-1]
  return re.sub(r'^[\w.]+: ', '', last.strip())


def parse_flags(argv, config_flag):
  """absl's flag parsing, with a bad config file or field as one line."""
  path = _config_path(argv)
  from moe_jax.config import renames  # pylint: disable=g-import-not-at-top
  moved = renames.moved_in_argv(argv)
  if moved:  # An old flag: name the field's new place, not "unknown".
    fail(moved)
  try:
    argv = flags.FLAGS(argv)
    # The config file loads lazily; touch it so a bad path fails here.
    config = config_flag.value
    if config is not None and not isinstance(config,
                                             ml_collections.ConfigDict):
      # A file that failed to load stands in as an object whose attributes
      # raise its OSError (handled below); anything else is a wrong return.
      getattr(config, 'to_dict', None)
      fail(f'{path}: get_config() returned {type(config).__name__}, not an '
           'ml_collections.ConfigDict; return one (start from '
           'moe_jax.config.default_config.get_default_config()).')
    if config is not None:
      config.to_dict()
    return argv
  except SyntaxError as e:
    fail(f'config file {e.filename} line {e.lineno}: {e.msg}; fix the file.')
  except ImportError as e:
    # Raised while the file is executed: a missing package or a typo.
    fail(f'{path} could not be loaded: {type(e).__name__}: {e}; install the '
         'module or fix the import.')
  except OSError as e:
    fail(f'could not load the config file: {str(e).splitlines()[-1].strip()}'
         '; pass --config=configs/<name>.py from the repository root.')
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    # absl and ml_collections would print tracebacks; one line says enough.
    raised = _raised_in_config(str(e))
    if raised is not None:
      fail(f'{path}: {raised}')
    fail(_flag_error(e))
