"""Noisy top-k gating (Shazeer et al. 2017) on the byte LM.

Command:
  python -m moe_jax.main --config=configs/noisy_topk.py --workdir=/tmp/noisy_topk
Data: the Python standard library's own source (found on every machine).
Model: as gshard_top2.py, but router='noisy_topk' (top-2, learned noise
  scale, softmax over the top 2) with the paper's importance and load CV²
  losses (weight 0.1 each) in place of the Switch balance loss.
Measured on a 2-core CPU (2026-11-28, jax 0.10.2), running the command above
  while other jobs shared the cores (load average 5–6), so an idle machine is
  faster: 600 steps in 412 s wall, start-up and compilation included;
  final validation loss 1.3045 nats/byte (1.882 bits/byte),
  on the validation split used until 2026-12 (the last 5% of the first
  8 MB of the stdlib); not yet rerun on today's held-out files.
Tiny variant for tests: --config=configs/noisy_topk.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'noisy_topk'
  c.moe.top_k = 2
  c.moe.load_balance_weight = 0.0
  c.moe.router_options.noisy_topk.importance_weight = 0.1
  c.moe.router_options.noisy_topk.load_cv_weight = 0.1
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
