"""Evaluate a run's latest checkpoint, or a Hugging Face model folder.

  python -m moe_jax.evaluate --workdir=runs/switch_top1
  python -m moe_jax.evaluate --workdir=runs/switch_top1 --eval_capacity_factor=1.0
  python -m moe_jax.evaluate --workdir=runs/switch_top1 --data=other.txt
  python -m moe_jax.evaluate --hf=path/to/folder --data=text.txt --eval_capacity_factor=1.0,1.25

With --workdir: the run's config comes from its checkpoint, so no config
file is needed. A LoRA run's workdir works too (its adapters are folded into
the base in memory). Prints the validation loss, bits per byte (or per
token) and the routing metrics, one per line.

With --hf: the perplexity of the folder's model on the text file, with its
own tokenizer.json, dropless and then at each capacity factor, one line each
(moe_jax/perplexity.py). Bad input is one `error:` line and exit 2.
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


def _factors(text: str | None) -> list[float]:
  """'1.0,1.25' -> [1.0, 1.25]; None -> []."""
  try:
    return [float(v) for v in text.split(',')] if text else []
  except ValueError:
    raise UserInputError(
        f'--eval_capacity_factor={text!r} is not a number or a comma-'
        'separated list of numbers; e.g. 1.0,1.25') from None


# Flags that mean something with one source only.
_ONLY = {'hf': ('seq_len', 'batch_size', 'max_tokens'),
         'workdir': ('dispatcher', 'eval_batches')}


def _check_flags(args) -> None:
  for source, flags in _ONLY.items():
    for flag in flags:
      if getattr(args, source) is None and getattr(args, flag) is not None:
        raise UserInputError(f'--{flag} applies only with --{source}; drop '
                             'it')


def _run_hf(args) -> None:
  """--hf: one line per setting (moe_jax/perplexity.py)."""
  # Imported here so `--help` and argument errors stay fast.
  from moe_jax import perplexity  # pylint: disable=g-import-not-at-top
  if args.data is None:
    raise UserInputError('--hf needs --data, the text file to score')
  seq_len = args.seq_len or perplexity.SEQ_LEN
  scores = perplexity.score_folder(
      args.hf, args.data, _factors(args.eval_capacity_factor),
      seq_len=seq_len, batch_size=args.batch_size or perplexity.BATCH_SIZE,
      max_tokens=args.max_tokens)
  print(f'{args.hf} on {args.data}, windows of up to {seq_len} tokens:')
  for score in scores:
    print(score.line())


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m moe_jax.evaluate',
      description=__doc__.splitlines()[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='a training run')
  source.add_argument('--hf', help='a Hugging Face model folder with its '
                      'tokenizer.json (needs --data, a text file)')
  parser.add_argument('--eval_capacity_factor',
                      help="instead of the run's moe.eval_capacity_factor; "
                      'with --hf a comma-separated list (dropless comes '
                      'first anyway)')
  parser.add_argument('--dispatcher',
                      help="instead of the run's moe.dispatcher, e.g. "
                      'dropless (nothing dropped)')
  parser.add_argument('--eval_batches', type=int,
                      help="instead of the run's train.eval_batches")
  parser.add_argument('--data', help='a text file or folder, or a .npy/.bin '
                      "token file, instead of the run's data (with --hf: "
                      'the text file to score)')
  parser.add_argument('--seq_len', type=int,
                      help='with --hf: tokens per scored window (256)')
  parser.add_argument('--batch_size', type=int,
                      help='with --hf: windows per forward pass (8)')
  parser.add_argument('--max_tokens', type=int,
                      help="with --hf: score only the text's first N tokens")
  args = parser.parse_args(argv)
  try:
    _check_flags(args)
    if args.hf is not None:
      _run_hf(args)
      return 0
    factors = _factors(args.eval_capacity_factor)
    if len(factors) > 1:
      raise UserInputError('--eval_capacity_factor takes one value with '
                           '--workdir; run once per value')
    step, metrics = evaluate_workdir(
        args.workdir, eval_capacity_factor=factors[0] if factors else None,
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
