"""Continue a prompt with a trained run or a Hugging Face MoE model.

  python -m moe_jax.sample --workdir runs/switch_top1 --prompt 'def '
  python -m moe_jax.sample --workdir runs/switch_top1 --prompt 'import ' \
      --temperature 0.8 --top-k 20 --num-samples 3 --seed 1
  python -m moe_jax.sample --hf path/to/mixtral_folder --prompt 'Hello' \
      --temperature 0

A workdir's latest checkpoint is restored with its config (byte-level, or
the run's data.tokenizer); an HF folder needs its tokenizer.json, and
generation stops at its eos_token_id. Each sample is printed as prompt plus
continuation. Bad input is one `error:` line and exit 2.
"""

from __future__ import annotations

import argparse
import sys

from moe_jax.errors import UserInputError

# Continuations are this long unless --max-new-tokens says otherwise (or the
# model's max_len leaves less room).
_DEFAULT_NEW_TOKENS = 200


def sample_text(loaded, prompt: str, *, max_new_tokens: int | None,
                sampling, seed: int, num_samples: int,
                moe: str = 'dropless') -> list[str]:
  """num_samples continuations of `prompt` (text), each prompt + new text."""
  from moe_jax.generation import generate  # pylint: disable=g-import-not-at-top
  ids = loaded.codec.encode(prompt)
  if max_new_tokens is None:
    room = loaded.model.config.max_len - len(ids)
    max_new_tokens = min(_DEFAULT_NEW_TOKENS, room) if room > 0 else 1
  out = generate(loaded.model, [ids] * num_samples,
                 max_new_tokens=max_new_tokens, sampling=sampling, key=seed,
                 stop_token=loaded.stop_token, moe=moe)
  return [prompt + loaded.codec.decode(row[:n])
          for row, n in zip(out.tokens, out.lengths)]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m moe_jax.sample', description=__doc__.splitlines()[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='a training run')
  source.add_argument('--hf', help='a Hugging Face Mixtral / Qwen2-MoE folder')
  parser.add_argument('--prompt', required=True)
  parser.add_argument('--max-new-tokens', type=int,
                      help=f'default: {_DEFAULT_NEW_TOKENS}, or what fits '
                      "the model's max_len")
  parser.add_argument('--temperature', type=float, default=1.0,
                      help='0: greedy (default 1.0)')
  parser.add_argument('--top-k', type=int, help='sample among the k most '
                      'likely tokens')
  parser.add_argument('--top-p', type=float, default=1.0,
                      help='nucleus sampling mass (default 1.0: off)')
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--num-samples', type=int, default=1)
  parser.add_argument('--moe', default='dropless',
                      help="MoE routing while decoding: 'dropless' (default) "
                      "or 'capacity' (the model's own)")
  args = parser.parse_args(argv)
  try:
    # Imported here so --help and argument errors stay fast.
    from moe_jax.errors import check_positive  # pylint: disable=g-import-not-at-top
    from moe_jax.generation import Sampling, load  # pylint: disable=g-import-not-at-top
    check_positive('--num-samples', args.num_samples)
    if not args.prompt:
      raise UserInputError('--prompt is empty; give at least one character')
    sampling = Sampling(args.temperature, args.top_k, args.top_p)
    loaded = (load.from_workdir(args.workdir) if args.workdir
              else load.from_hf(args.hf))
    texts = sample_text(loaded, args.prompt,
                        max_new_tokens=args.max_new_tokens, sampling=sampling,
                        seed=args.seed, num_samples=args.num_samples,
                        moe=args.moe)
  except UserInputError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  for i, text in enumerate(texts):
    if len(texts) > 1:
      print(f'--- sample {i + 1} ---')
    print(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
