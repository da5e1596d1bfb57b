"""DeepSeek-V2 / V3 routing: group-limited top-k with scaled gates
(DeepSeek-V2, DeepSeek-AI 2024, Sec. 2.2.2; DeepSeek-V3, Liu et al. 2024,
Sec. 2.1.2).

The E routed experts are split into `n_group` groups of E / n_group
consecutive experts (one group per device in DeepSeek's deployment, so a
token's all-to-all reaches at most `topk_group` devices). Per token:

  1. affinities s: sigmoid(logits) (V3) or softmax(logits) (V2);
  2. selection scores s + b, with b the loss-free selection bias (V3's
     e_score_correction_bias; sigmoid.py), 0 when balancing is off;
  3. each group is scored by the sum of its two best selection scores (V3)
     or by its best one (V2), and the `topk_group` best groups are kept;
  4. top-k experts by selection score among the kept groups' experts;
  5. gates: the chosen experts' s (never s + b), renormalised to sum to 1 or
     not (Hugging Face's norm_topk_prob), times `routed_scaling_factor`
     (2.5 in V3, 16 in V2, 1 in V2-Lite).

With n_group = topk_group = 1, sigmoid scores, renormalisation and a factor
of 1 this is the `sigmoid` router exactly (tests/test_core_deepseek.py).
Experts of dropped groups are excluded with -inf, as transformers 5.23's
DeepseekV3TopkRouter does (its V2 router and DeepSeek's original code fill
them with 0, which chooses the same experts whenever the kept experts'
selection scores are positive: always for softmax scores without a bias).
Parity with both blocks: tests/test_deepseek_hf_torch.py.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from moe_jax.core import losses
from moe_jax.core.plan import RoutingPlan
from moe_jax.core.routing import quantile_balance, registry
from moe_jax.core.routing import sigmoid as sigmoid_lib
from moe_jax.core.routing.common import build_plan, choose, top_k_experts
from moe_jax.errors import UserInputError, check_bool, check_choice, require

SCORES = ('sigmoid', 'softmax')
GROUP_SCORES = ('top2_sum', 'max')


@dataclasses.dataclass(frozen=True)
class Options:
  """moe.router_options.deepseek. Defaults are DeepSeek-V3's rule with no
  grouping and no scaling; the V3 / V2 checkpoints' values are in the
  comments.

  Attributes:
    score: 'sigmoid' (V3) or 'softmax' (V2) affinities.
    n_group: groups of experts (V3: 8 of 256 experts); must divide E.
    topk_group: groups kept per token (V3: 4), <= n_group.
    group_score: how a group is scored: 'top2_sum' (V3), 'max' (V2).
    renormalize: gates renormalised over the K chosen (V3: True; V2: False).
    routed_scaling_factor: multiplies the gates (V3: 2.5; V2: 16).
    bias_update_rate: γ of the loss-free selection bias (V3: 1e-3); 0: no
      bias. Moved like the sigmoid router's (sigmoid.update_bias).
    bias_update: 'sign' (the ±γ rule) or 'quantile' (quantile balancing,
      quantile_balance.py: the bias solved from each step's batch; γ stays
      0 and a bias is always present). As the sigmoid router's.
    quantile_weight: w of quantile balancing's EMA; 1: the solve itself.
  """

  score: str = 'sigmoid'
  n_group: int = 1
  topk_group: int = 1
  group_score: str = 'top2_sum'
  renormalize: bool = True
  routed_scaling_factor: float = 1.0
  bias_update_rate: float = 0.0
  bias_update: str = 'sign'
  quantile_weight: float = 1.0

  def __post_init__(self):
    name = 'router_options.deepseek.'
    check_choice(name + 'score', self.score, SCORES)
    check_choice(name + 'group_score', self.group_score, GROUP_SCORES)
    check_bool(name + 'renormalize', self.renormalize)
    for field in ('n_group', 'topk_group'):
      value = getattr(self, field)
      require(isinstance(value, int) and not isinstance(value, bool) and
              value >= 1, name + field, value, 'be an int >= 1')
    require(self.topk_group <= self.n_group, name + 'topk_group',
            self.topk_group, f'be <= n_group={self.n_group}',
            'keep at most as many groups as there are')
    for field in ('routed_scaling_factor', 'bias_update_rate'):
      value = getattr(self, field)
      require(isinstance(value, (int, float)) and not isinstance(value, bool)
              and value >= 0 and value < float('inf'), name + field, value,
              'be a finite number >= 0')
    sigmoid_lib.check_bias_update(self, name)

  @property
  def has_bias(self) -> bool:
    """Whether the layers carry a selection bias."""
    return sigmoid_lib.has_bias(self)


def _group_mask(select: jax.Array, n_group: int, topk_group: int,
                group_score: str) -> jax.Array:
  """bool [G, S, E]: the experts of each token's topk_group best groups.

  select: float32 [G, S, E] selection scores.
  """
  *lead, num_experts = select.shape
  grouped = select.reshape(*lead, n_group, num_experts // n_group)
  if group_score == 'top2_sum':
    score = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [G, S, n_group]
  else:
    score = jnp.max(grouped, axis=-1)
  _, kept = top_k_experts(score, topk_group)  # [G, S, topk_group]
  kept = jnp.any(jax.nn.one_hot(kept, n_group, dtype=bool), axis=-2)
  return jnp.repeat(kept, num_experts // n_group, axis=-1)


def deepseek_top_k(logits: jax.Array, *, capacity: int | None, k: int,
                   options: Options = Options(),
                   key: jax.Array | None = None,
                   bias: jax.Array | None = None,
                   balance_fn: Callable = losses.load_balance_loss,
                   replay: jax.Array | None = None,
                   solve_quantile: bool = False
                   ) -> tuple[RoutingPlan, dict]:
  """Group-limited top-k on sigmoid or softmax affinities (module docstring).

  Args:
    logits: float [G, S, E].
    capacity: C, or None for dropless.
    k: K.
    options: the rule (Options).
    key: unused (deterministic).
    bias: float [E] selection bias b, or None (b = 0).
    balance_fn: the load-balance loss, applied to s / Σ_e s (the softmax
      itself for softmax scores).
    solve_quantile: also solve the quantile-balancing bias of this batch
      (needs bias and k < E).

  Returns:
    (plan, aux); aux adds 'expert_load' [E], the routed choices per expert
    over the whole batch (what the sign update reads), with a bias
    'router_bias' [E], and with solve_quantile 'quantile_bias' [E].
  """
  del key
  logits = logits.astype(jnp.float32)
  if options.score == 'sigmoid':
    scores = jax.nn.sigmoid(logits)  # [G, S, E]
  else:
    scores = jax.nn.softmax(logits, axis=-1)
  select = scores if bias is None else scores + jax.lax.stop_gradient(
      bias.astype(jnp.float32))
  kept = None
  if options.n_group > 1:
    kept = _group_mask(select, options.n_group, options.topk_group,
                       options.group_score)
    select = jnp.where(kept, select, -jnp.inf)
  _, expert_index = choose(select, k, replay)  # [G, S, K]
  gates = jnp.take_along_axis(scores, expert_index, axis=-1)
  if options.renormalize:
    gates = gates / jnp.sum(gates, axis=-1, keepdims=True)
  gates = gates * options.routed_scaling_factor
  probs = scores / jnp.sum(scores, axis=-1, keepdims=True)
  routed = jnp.ones(gates.shape, bool)
  plan, aux = build_plan(logits, probs, expert_index, gates, routed, capacity,
                         balance_fn)
  aux['expert_load'] = jnp.sum(
      jax.nn.one_hot(expert_index, scores.shape[-1]), axis=(0, 1, 2))
  if bias is not None:  # Logged like the sigmoid router's bias.
    aux['router_bias'] = jax.lax.stop_gradient(bias.astype(jnp.float32))
    if solve_quantile:
      # Solved where the bias is added, on the affinities s, over each
      # token's kept groups: solving over all E experts instead ignores the
      # group limit and settled 37.5% above T·K/E on the skewed batch of
      # tests/test_core_deepseek_quantile.py.
      aux['quantile_bias'] = quantile_balance.solve_bias(scores, bias, k,
                                                         eligible=kept)
  return plan, aux


def _route(inputs, config, *, train, capacity, key, balance_fn):
  # The solve is for the update after a training step; eval skips its sort.
  solve = train and config.router_options.bias_update == 'quantile'
  return deepseek_top_k(inputs.logits, capacity=capacity, k=config.top_k,
                        options=config.router_options, key=key,
                        bias=inputs.params.get('router_bias'),
                        balance_fn=balance_fn, replay=inputs.replay,
                        solve_quantile=solve)


def _check(config) -> None:
  """Checks that need E and K, which are shared fields."""
  o = config.router_options
  e, name = config.num_experts, 'router_options.deepseek.'
  if e % o.n_group:
    raise UserInputError(
        f'{name}n_group={o.n_group} must divide num_experts={e}; pick a '
        'divisor of the expert count.')
  per_group = e // o.n_group
  if o.n_group > 1 and o.group_score == 'top2_sum' and per_group < 2:
    raise UserInputError(
        f"{name}group_score='top2_sum' needs >= 2 experts per group, but "
        f'num_experts={e} in n_group={o.n_group} gives {per_group}; use '
        "group_score='max' or fewer groups.")
  sigmoid_lib.check_quantile_top_k(config, 'deepseek')
  if config.top_k > o.topk_group * per_group:
    raise UserInputError(
        f'top_k={config.top_k} is more than the {o.topk_group * per_group} '
        f'experts of the topk_group={o.topk_group} kept groups '
        f'({per_group} each); raise {name}topk_group or lower top_k.')


SPEC = registry.register(registry.RouterSpec(
    name='deepseek', route=_route, options=Options, check=_check,
    replayable=True,
    extra_params=lambda config: (
        (sigmoid_lib.ROUTER_BIAS,) if config.router_options.has_bias else ()),
    update_state=sigmoid_lib.update_state, totals=('expert_load',),
    batch_pooled=sigmoid_lib.batch_pooled('deepseek')))
