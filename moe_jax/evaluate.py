"""Evaluate a run's latest checkpoint: validation loss and routing metrics.

  python -m moe_jax.evaluate --workdir=runs/switch_top1
  python -m moe_jax.evaluate --workdir=runs/switch_top1 --eval_capacity_factor=1.0
  python -m moe_jax.evaluate --workdir=runs/switch_top1 --data=other.txt

The run's config comes from its checkpoint, so no config file is needed. A
LoRA run's workdir works too (its adapters are folded into the base in
memory). Prints the validation loss, bits per byte (or per token) and the
routing metrics, one per line. Bad input is one `error:` line and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from moe_jax.errors import UserInputError

# Suffixes of the token files --data may name; anything else is text.
_TOKEN_SUFFIXES = ('.npy', '.bin')


def evaluate_workdir(workdir: str, *, eval_capacity_factor: float | None = None,
                     dispatcher: str | None = None,
                     eval_batches: int | None = None,
                     data: str | None = None) -> tuple[int, dict[str, float]]:
  """(checkpoint step, eval metrics) of the latest checkpoint in `workdir`.

  Args:
    workdir: a training run's workdir.
    eval_capacity_factor, dispatcher, eval_batches: override the run's
      moe.eval_capacity_factor, moe.dispatcher and train.eval_batches.
    data: evaluate on this text file or folder (or .npy/.bin token file)
      instead of the run's data, read with the run's data settings
      (tokenizer, token_dtype, max_bytes, val_fraction): its validation
      split is what is scored.
  """
  # Imported here so `--help` and argument errors stay fast.
  from moe_jax.train import evaluate  # pylint: disable=g-import-not-at-top
  from moe_jax.train import saved_run  # pylint: disable=g-import-not-at-top

  step, config = saved_run.latest_config(workdir)
  overrides = {'moe__eval_capacity_factor': eval_capacity_factor,
               'moe__dispatcher': dispatcher,
               'train__eval_batches': eval_batches}
  if data is not None:
    overrides['data__path'] = data
    overrides['data__kind'] = ('tokens' if data.endswith(_TOKEN_SUFFIXES)
                               else 'text')
  overrides = {k: v for k, v in overrides.items() if v is not None}
  return step, evaluate.evaluate_checkpoint(config, workdir, **overrides)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m moe_jax.evaluate',
      description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='a training run')
  parser.add_argument('--eval_capacity_factor', type=float,
                      help="instead of the run's moe.eval_capacity_factor")
  parser.add_argument('--dispatcher',
                      help="instead of the run's moe.dispatcher, e.g. "
                      'dropless (nothing dropped)')
  parser.add_argument('--eval_batches', type=int,
                      help="instead of the run's train.eval_batches")
  parser.add_argument('--data', help='a text file or folder, or a .npy/.bin '
                      "token file, instead of the run's data")
  args = parser.parse_args(argv)
  try:
    step, metrics = evaluate_workdir(
        args.workdir, eval_capacity_factor=args.eval_capacity_factor,
        dispatcher=args.dispatcher, eval_batches=args.eval_batches,
        data=args.data)
  except UserInputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  print(f'checkpoint: step {step} of {args.workdir}')
  for name, value in metrics.items():
    print(f'{name} {value:.6g}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
