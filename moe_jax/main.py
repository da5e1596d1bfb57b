"""Command-line entry point.

  python -m moe_jax.main --config=configs/switch_top1.py --workdir=/tmp/run
  python -m moe_jax.main --config=configs/switch_top1.py:tiny --workdir=... \
      --config.moe.num_experts=16

Bad input (an unknown config field, a wrong value, missing data, an
incompatible workdir) ends with one line on stderr and exit status 2.
SIGINT/SIGTERM finish the current step, save it, and exit with 128 + signum.
"""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from moe_jax import cli
from moe_jax.errors import UserInputError

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, optionally with :arg.',
    lock_config=True)
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process '
    'runs (or set JAX_COORDINATOR_ADDRESS; SLURM and TPU pods are detected).')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of processes in a multi-process run.')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process\'s index in a multi-process run.')
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints and metrics; a run resumes '
    'from the checkpoints already there.')


def _parse_flags(argv):
  return cli.parse_flags(argv, _CONFIG)


def main(argv) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; pass --config and --workdir.')
  if _CONFIG.value is None or not _WORKDIR.value:
    cli.fail('both --config=configs/<name>.py and --workdir=<dir> are required.')
  # Orbax logs every file it renames at INFO; keep the terminal readable.
  logging.set_verbosity(logging.WARNING)
  from moe_jax.parallel import distributed  # pylint: disable=g-import-not-at-top
  from moe_jax.train.interrupt import TrainingInterrupted  # pylint: disable=g-import-not-at-top
  from moe_jax.train.trainer import NonFiniteLossError, train_and_evaluate  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                           _PROCESS_ID.value)
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (UserInputError, NonFiniteLossError) as e:
    cli.fail(str(e))
  except TrainingInterrupted as e:
    # Non-zero, as a shell expects of a job stopped by a signal (130, 143).
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(e.exit_code)


if __name__ == '__main__':
  app.run(main, flags_parser=_parse_flags)
