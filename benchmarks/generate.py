"""Cached generation against recomputing the forward for every new token.

  python benchmarks/generate.py [--config=configs/switch_top1.py] \
      [--new=64] [--prompt=16] [--out=runs/benchmarks/generate.json]

Builds the config's model (random weights: the time does not depend on
them), then for batch sizes 1 and 8 times, after compiling:
  cached  moe_jax.generation.generate: prefill + jitted while_loop over a
          KV cache, greedy, `--new` tokens per prompt;
  naive   the jitted full forward over a fixed [B, prompt + new] buffer,
          once per new token, argmax (what decoding costs without a cache);
and reports new tokens/s of each. It also reports the largest |cached -
full| logit over every decode step (teacher-forced, prompts of different
lengths, float32), the check tests/test_generate.py makes at <= 1e-5.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from benchmarks import common  # pylint: disable=g-import-not-at-top
from benchmarks.train_step import load_config  # pylint: disable=g-import-not-at-top
from moe_jax.generation import (decode_moe_config, decode_step, generate,  # pylint: disable=g-import-not-at-top
                                prefill)
from moe_jax.models import KVCache, TransformerLM  # pylint: disable=g-import-not-at-top
from moe_jax.train.setup import model_config  # pylint: disable=g-import-not-at-top


@nnx.jit
def _forward(model, tokens):
  return model(tokens)[0]


def naive_greedy(model, tokens: np.ndarray, prompt: int, new: int):
  """Greedy by recomputing the full forward each step (one compiled shape)."""
  buf = jnp.asarray(tokens)
  for t in range(new):
    logits = _forward(model, buf)
    buf = buf.at[:, prompt + t].set(jnp.argmax(logits[:, prompt + t - 1], -1))
  return jax.block_until_ready(buf)


def max_cached_error(model, seq: np.ndarray, lengths: np.ndarray) -> float:
  """max |cached - full| logit, prefill and every teacher-forced step.

  The full forward routes as the decode does (dropless): with capacity it
  would drop tokens the decode keeps, a difference of routing, not of the
  cache.
  """
  config = model.config
  moe_config = decode_moe_config(config)
  dropless = (config if moe_config is None
              else dataclasses.replace(config, moe=moe_config))
  graphdef = nnx.graphdef(nnx.eval_shape(
      lambda: TransformerLM(dropless, rngs=nnx.Rngs(0))))
  reference = nnx.merge(graphdef, nnx.state(model))
  full = _forward(reference, jnp.asarray(seq))
  b, total = seq.shape
  rows = np.arange(b)
  padded = np.where(np.arange(total) < lengths[:, None], seq, 0)
  cache = KVCache.zeros(config, b, total)
  step = nnx.jit(decode_step, static_argnames='moe_config')
  logits, cache = nnx.jit(prefill, static_argnames='moe_config')(
      model, jnp.asarray(padded), jnp.asarray(lengths), cache, moe_config)
  err = float(jnp.abs(logits - full[rows, lengths - 1]).max())
  pos = lengths.copy()
  while pos.max() < total:
    pos_c = np.minimum(pos, total - 1)
    logits, cache = step(model, jnp.asarray(seq[rows, pos_c]),
                         jnp.asarray(pos_c), cache, moe_config)
    err = max(err, float(jnp.abs(logits - full[rows, pos_c]).max()))
    pos += 1
  return err


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--config', default='configs/switch_top1.py')
  parser.add_argument('--new', type=int, default=64)
  parser.add_argument('--prompt', type=int, default=16)
  parser.add_argument('--out', default='runs/benchmarks/generate.json')
  args = parser.parse_args()
  mcfg = model_config(load_config(args.config))
  model = TransformerLM(mcfg, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  total = args.prompt + args.new
  rows = []
  for b in (1, 8):
    tokens = rng.integers(0, mcfg.vocab_size, (b, total)).astype(np.int32)
    prompts = [list(r[:args.prompt]) for r in tokens]
    times = common.time_interleaved({
        'cached': lambda: generate(model, prompts, max_new_tokens=args.new),
        'naive': lambda: naive_greedy(model, tokens, args.prompt, args.new),
    }, warmup=1, rounds=3, inner=1)
    rows.append({'batch': b, **{f'{k}_tokens_per_s': b * args.new / v
                                for k, v in times.items()},
                 'speedup': times['naive'] / times['cached']})
  seq = rng.integers(0, mcfg.vocab_size, (4, total)).astype(np.int32)
  lengths = np.array([args.prompt, 3, args.prompt + 5, 9], np.int32)
  error = max_cached_error(model, seq, lengths)
  print(f'{args.config}: prompt {args.prompt}, {args.new} new tokens, '
        f'greedy, {jax.devices()[0].platform}')
  print('| batch | cached tokens/s | naive tokens/s | speed-up |')
  print('|---|---|---|---|')
  for r in rows:
    print(f"| {r['batch']} | {r['cached_tokens_per_s']:.0f} | "
          f"{r['naive_tokens_per_s']:.0f} | {r['speedup']:.1f}x |")
  print(f'max |cached - full| logit: {error:.2e}')
  common.write_json(args.out, {'config': args.config, 'prompt': args.prompt,
                               'new': args.new, 'rows': rows,
                               'max_abs_logit_error': error})


if __name__ == '__main__':
  main()
