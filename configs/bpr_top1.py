"""Batch-prioritised routing (V-MoE, Riquelme et al. 2021) on the byte LM.

Command:
  python -m moe_jax.main --config=configs/bpr_top1.py --workdir=/tmp/bpr_top1
Data: the Python standard library's own source (found on every machine).
Model: as switch_top1.py, but router='bpr' (top-1, raw softmax gate): when
  capacity is short, the tokens with the highest top gate keep their slot,
  whatever their position (so later tokens can evict earlier ones).
Measured on a 2-core CPU (2026-11-28, jax 0.10.2), running the command above
  while other jobs shared the cores (load average 5–6), so an idle machine is
  faster: 600 steps in 233 s wall, start-up and compilation included;
  final validation loss 1.2970 nats/byte (1.871 bits/byte),
  on the validation split used until 2026-12 (the last 5% of the first
  8 MB of the stdlib); not yet rerun on today's held-out files.
Tiny variant for tests: --config=configs/bpr_top1.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'bpr'
  c.moe.top_k = 1
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
