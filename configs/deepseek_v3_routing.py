"""DeepSeek-V3 routing: sigmoid affinities, group-limited top-k, scaled gates,
loss-free balancing bias.

Command:
  python -m moe_jax.main --config=configs/deepseek_v3_routing.py --workdir=/tmp/deepseek_v3_routing
Data: the Python standard library's own source (found on every machine).
Model: as sigmoid_loss_free.py (router bias moved ±γ = 1e-3 after each step,
  sequence-wise balance loss at α = 1e-4), with DeepSeek-V3's routing rule
  (Liu et al. 2024, Sec. 2.1.2): the 8 experts in 4 groups of 2; each token
  keeps the 2 groups with the best sum of their two selection scores, then
  its top-2 experts among those 4; gates renormalised over the two and
  multiplied by V3's routed_scaling_factor 2.5. (V3 itself: 256 experts in
  8 groups, 4 kept, top-8.)
Not yet run to completion; no numbers are claimed for it.
Tiny variant for tests: --config=configs/deepseek_v3_routing.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'deepseek'
  c.moe.top_k = 2
  options = c.moe.router_options.deepseek
  options.n_group = 4
  options.topk_group = 2
  options.routed_scaling_factor = 2.5
  options.bias_update_rate = 1e-3
  c.moe.balance_loss_scope = 'sequence'
  c.moe.load_balance_weight = 1e-4
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
