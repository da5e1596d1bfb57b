"""Training throughput of the slowest ablation variant at each candidate width.

  python -m experiments.throughput [--steps 60]

The regime scan sizes each candidate's run from these numbers: the slowest
variant in any ablation is GShard top-2 at capacity factor 2.0, so its
tokens/s at width D bounds how many steps fit the per-run budget.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

from absl import logging

from experiments import regime_config
from moe_jax.train.trainer import train_and_evaluate


def measure(d_model: int, steps: int) -> float:
  """Mean logged tokens/s (compile excluded) of top-2 cf 2.0 at width D."""
  c = regime_config.base_config(d_model, steps)
  c.moe.router, c.moe.top_k, c.moe.capacity_factor = 'gshard', 2, 2.0
  c.train.log_every = steps // 3
  c.train.eval_every = c.train.checkpoint_every = steps
  c.train.eval_batches = 1
  with tempfile.TemporaryDirectory() as workdir:
    train_and_evaluate(c, workdir)
    rates = [json.loads(line).get('tokens_per_sec') for line in
             (pathlib.Path(workdir) / 'metrics.jsonl').open()]
  rates = [r for r in rates if r]
  return sum(rates) / len(rates)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=60)
  args = parser.parse_args()
  logging.set_verbosity(logging.WARNING)
  rows = [(d, measure(d, args.steps)) for d in regime_config.CANDIDATE_WIDTHS]
  print('| D | top-2 cf 2.0 tokens/s | steps in 150 s (B·L = 2048) |')
  print('|---|---|---|')
  for d, rate in rows:
    print(f'| {d} | {rate:,.0f} | {int(rate * 150 / 2048) // 100 * 100} |')


if __name__ == '__main__':
  main()
