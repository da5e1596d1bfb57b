"""GShard top-2 MoE LM: switch_top1.py with only the routing changed.

Command:
  python -m moe_jax.main --config=configs/gshard_top2.py --workdir=/tmp/gshard_top2
Data: the Python standard library's own source (found on every machine).
Model: as switch_top1.py, but router='gshard', top_k=2 (pair-renormalised
  gates, random second-expert policy in training, 'all' at eval). Capacity is
  per choice, C = ceil(K·S·cf/E), so top-2 has twice top-1's buffer room and
  does twice the expert FLOPs per token.
Measured on a 2-core CPU (2026-11-22, jax 0.10.2), running the command above:
  600 steps in 245 s wall, start-up and compilation included; final
  validation loss 1.2660 nats/byte (1.826 bits/byte),
  on the validation split used until 2026-12 (the last 5% of the first
  8 MB of the stdlib); not yet rerun on today's held-out files.
Tiny variant for tests: --config=configs/gshard_top2.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'gshard'
  c.moe.top_k = 2
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
