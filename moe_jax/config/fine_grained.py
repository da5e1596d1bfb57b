"""Fine-grained expert segmentation (DeepSeekMoE, Dai et al. 2024, Sec. 3.1
and 3.2) as a config helper.

Splitting each of E experts of width F into m experts of width F/m, and
activating m·K of them, keeps the total and the per-token active expert
parameters fixed while multiplying the routing combinations. Turning K_s of
the m·E fine experts into always-on shared experts (shared expert
isolation) keeps both counts fixed too: E' = m·E − K_s routed experts,
K' = m·K − K_s of them per token, plus K_s shared experts of width F/m.
Only the router grows, from D·E to D·E' weights.
"""

from __future__ import annotations

from moe_jax.core import routing
from moe_jax.errors import UserInputError, require


def split_experts(moe, m: int, num_shared: int = 0):
  """Rewrites an MoE config section in place (a ConfigDict's `c.moe`).

  Args:
    moe: has num_experts, top_k, d_ff, router, num_shared_experts.
    m: the split factor; must divide d_ff.
    num_shared: K_s of the m·E fine experts made shared, < m·top_k.

  Returns:
    moe, for chaining.
  """
  e, k, f = moe.num_experts, moe.top_k, moe.d_ff
  require(isinstance(m, int) and m >= 1 and f % m == 0,
          'fine-grained split m', m, f'be a positive int dividing moe.d_ff={f}')
  require(0 <= num_shared < m * k, 'num_shared', num_shared,
          f'be in [0, m·top_k={m * k}) so some experts stay routed')
  moe.num_experts = m * e - num_shared
  moe.top_k = m * k - num_shared
  moe.d_ff = f // m
  moe.num_shared_experts = num_shared
  spec = routing.get(moe.router)
  if spec.fixed_k is not None and moe.top_k != spec.fixed_k:
    # A router that fixes K (Switch: 1, GShard: 2) hands over to the one
    # that routes like it at any K.
    moe.router = spec.any_k_router
  return moe
