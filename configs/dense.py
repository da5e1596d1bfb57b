"""Dense twin of switch_top1.py: every FFN dense, same active params/token.

Command:
  python -m moe_jax.main --config=configs/dense.py --workdir=/tmp/dense
Data: the Python standard library's own source (found on every machine).
Model: switch_top1.py with model.moe_every=0, so each MoE FFN (one expert of
  width F=512 per token) becomes a dense FFN of width d_ff=512.
Measured on a 2-core CPU (2026-11-22, jax 0.10.2), running the command above:
  600 steps in 176 s wall, start-up and compilation included; final
  validation loss 1.2656 nats/byte (1.826 bits/byte),
  on the validation split used until 2026-12 (the last 5% of the first
  8 MB of the stdlib); not yet rerun on today's held-out files.
Tiny variant for tests: --config=configs/dense.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.model.moe_every = 0
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
