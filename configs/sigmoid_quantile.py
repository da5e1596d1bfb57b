"""DeepSeek-V3-style sigmoid routing balanced by quantile balancing (QB).

Command:
  python -m moe_jax.main --config=configs/sigmoid_quantile.py --workdir=/tmp/sigmoid_quantile
Data: the Python standard library's own source (found on every machine).
Model: as sigmoid_loss_free.py (top-2 on sigmoid affinity + bias, gates
  renormalised over the two chosen, sequence-wise balance loss at α = 1e-4),
  but the bias is not moved by ±γ: after each step it is solved from the
  step's whole batch so that every expert would take T·K/E of its choices
  (router_options.sigmoid.bias_update='quantile'; see
  moe_jax/core/routing/quantile_balance.py), taken outright
  (quantile_weight = 1; < 1 is an EMA of the solves).
Not yet measured at full size; the tiny variant trains in the tests
  (tests/test_train_router_zoo.py, tests/test_train_router_state.py).
Tiny variant for tests: --config=configs/sigmoid_quantile.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'sigmoid'
  c.moe.top_k = 2
  c.moe.router_options.sigmoid.bias_update = 'quantile'
  c.moe.balance_loss_scope = 'sequence'
  c.moe.load_balance_weight = 1e-4
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
