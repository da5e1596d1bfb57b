"""Forced-balanced top-2 routing, for throughput and memory measurements.

Command:
  python -m moe_jax.main --config=configs/uniform_top2.py --workdir=/tmp/uniform_top2
Data: the Python standard library's own source (found on every machine).
Model: as gshard_top2.py, but router='uniform': token s of each sequence goes
  to experts (2s) mod E and (2s + 1) mod E with gates 1/2, whatever the
  logits, so every expert gets exactly S·K/E choices and nothing is dropped
  at cf >= 1 (moe_jax/core/routing/uniform.py). The routing learns nothing:
  use it to time and size a dispatcher at perfect balance, not to compare
  quality. No balance loss (it would be constant); the z-loss stays.
Not yet measured at full size; the tiny variant trains in the tests
  (tests/test_train_router_zoo.py).
Tiny variant for tests: --config=configs/uniform_top2.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'uniform'
  c.moe.top_k = 2
  c.moe.load_balance_weight = 0.0
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
