"""ReMoE: ReLU routing with an adaptive L1 penalty (Wang et al., ICLR 2025).

Command:
  python -m moe_jax.main --config=configs/relu_router.py --workdir=/tmp/relu_router
Data: the Python standard library's own source (found on every machine).
Model: as gshard_top2.py, but router='relu': gates ReLU(x·W_r), a token goes
  to every expert with a positive gate (0..E of them); an L1 penalty on the
  gates, weighted by a per-layer λ that moves ×/÷ 1.2 each step toward the
  target of k = top_k = 2 experts per token on average (λ0 = 1e-8; see
  moe_jax/core/routing/relu.py). Dropless dispatch, as ReMoE; the plain
  Switch balance loss is off (load_balance_weight=0): ReMoE balances with
  the load-weighted L1 alone. Logged per MoE layer: experts_per_token
  ([E+1] histogram), experts_per_token_mean against experts_per_token_target,
  l1_weight (λ) and l1_loss.
Not yet measured at full size.
Tiny variant for tests: --config=configs/relu_router.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'relu'
  c.moe.top_k = 2  # The target experts per token, an average.
  c.moe.dispatcher = 'dropless'
  c.moe.load_balance_weight = 0.0
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
