"""GShard top-2 with axlearn's adaptive load-balance weight.

Command:
  python -m moe_jax.main --config=configs/gshard_adaptive_balance.py --workdir=/tmp/gshard_adaptive_balance
Data: the Python standard library's own source (found on every machine).
Model: as gshard_top2.py, but each MoE layer's balance-loss weight is
  α·exp(ℓ), α = 1e-2, with ℓ moved by ±0.01 per step while the moving
  average of the layer's over-capacity ratio (the share of choices dropped
  for lack of capacity, worst k-rank) is above 1% / below 0.1%
  (moe.adaptive_balance; axlearn's AdaptiveLoadBalanceLoss, see
  moe_jax/core/adaptive_balance.py). The weight is logged per layer as
  moe_<i>/balance_weight.
Not yet measured at full size; the tiny variant trains in the tests
  (tests/test_train_router_zoo.py, tests/test_train_router_state.py).
Tiny variant for tests: --config=configs/gshard_adaptive_balance.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'gshard'
  c.moe.top_k = 2
  c.moe.adaptive_balance.log_step = 0.01
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
