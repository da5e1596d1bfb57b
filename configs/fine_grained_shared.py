"""DeepSeekMoE-style fine-grained and shared experts on the byte LM.

Command:
  python -m moe_jax.main --config=configs/fine_grained_shared.py --workdir=/tmp/fine_grained_shared
Data: the Python standard library's own source (found on every machine).
Model: gshard_top2.py's experts (E=8, K=2, F=512) split 4 ways with 2 of
  the 32 fine experts made shared (split_experts(c.moe, 4, num_shared=2)):
  30 routed experts of width 128, top-6 (softmax over the top 6), plus 2
  always-on shared experts of width 128. Total and active expert
  parameters equal gshard_top2.py's.
Measured on a 2-core CPU (2026-11-28, jax 0.10.2), running the command above
  while other jobs shared the cores (load average 3–5), so an idle machine is
  faster: 600 steps in 248 s wall, start-up and compilation included;
  final validation loss 1.2379 nats/byte (1.786 bits/byte),
  on the validation split used until 2026-12 (the last 5% of the first
  8 MB of the stdlib); not yet rerun on today's held-out files.
Tiny variant for tests: --config=configs/fine_grained_shared.py:tiny
"""

from moe_jax.config.fine_grained import split_experts
from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'gshard'
  c.moe.top_k = 2
  split_experts(c.moe, 4, num_shared=2)
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
