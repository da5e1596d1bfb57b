"""Null experts (AdaMoE, Zeng et al. 2024; MoE++, Jin et al. 2024).

Command:
  python -m moe_jax.main --config=configs/null_experts.py --workdir=/tmp/null_experts
Data: the Python standard library's own source (found on every machine).
Model: as gshard_top2.py, but router='topk' with top_k=4 over E = 8 real and
  N = 8 null experts (router kernel 16 wide). A null choice adds nothing and
  is not dispatched, so a token uses 0..4 real experts; gates are
  renormalised over the real choices (AdaMoE). The balance loss spans all 16
  outputs, so at balance half the choices are null: 4·8/16 = 2 real expert
  passes per token, top-2's compute, which the run header assumes (K=2);
  the measured mean is the experts_per_token_mean metric, and null_fraction
  the share of choices that were null.
Not yet measured at full size.
Tiny variant for tests: --config=configs/null_experts.py:tiny
"""

from moe_jax.config.default_config import (check_variant, get_default_config,
                                          shrink_for_tests)


def get_config(arg: str | None = None):
  check_variant(arg)
  c = get_default_config()
  c.moe.router = 'topk'
  c.moe.top_k = 4
  c.moe.num_null_experts = 8
  if arg == 'tiny':
    shrink_for_tests(c)
  return c
