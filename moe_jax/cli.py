"""What every command-line entry point shares: one-line errors, exit 2."""

from __future__ import annotations

import sys

from absl import flags


def fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def one_line(error: BaseException) -> str:
  # ml_collections embeds escaped newlines and quotes in its KeyErrors.
  text = str(error).replace('\\n', ' ').replace("\\'", '')
  return ' '.join(text.split())


def parse_flags(argv, config_flag):
  """absl's flag parsing, with a bad config file or field as one line."""
  try:
    argv = flags.FLAGS(argv)
    # The config file loads lazily; touch it so a bad path fails here.
    if config_flag.value is not None:
      config_flag.value.to_dict()
    return argv
  except SyntaxError as e:
    fail(f'config file {e.filename} line {e.lineno}: {e.msg}; fix the file.')
  except OSError as e:
    fail(f'could not load the config file: {str(e).splitlines()[-1].strip()}'
         '; pass --config=configs/<name>.py from the repository root.')
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    # absl and ml_collections would print tracebacks; one line says enough.
    message = one_line(e)
    if isinstance(e, (AttributeError, KeyError)):
      message = f'unknown config field {message.strip(chr(39))}'
    fail(message)
