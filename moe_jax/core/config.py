"""MoEConfig: every knob of an MoE layer, validated in one place."""

from __future__ import annotations

import dataclasses
import functools

from moe_jax.core import capacity as capacity_lib
from moe_jax.core import bpr
from moe_jax.core import expert_choice
from moe_jax.core import losses
from moe_jax.core import noisy_topk
from moe_jax.core import sigmoid_router
from moe_jax.core import routers
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.core.experts import EXPERT_TYPES
from moe_jax.errors import UserInputError, check_bool, check_choice, check_positive

ROUTERS = ('switch', 'gshard', 'topk', 'expert_choice', 'sigmoid',
           'noisy_topk', 'bpr', 'soft')
# The number of choices a router makes, where the router fixes it.
_ROUTER_K = {'switch': 1, 'gshard': 2}
# Routers whose group-wide form lets later tokens change earlier outputs;
# `causal_routing` selects their lookahead-free form.
NONCAUSAL_CAPABLE = ('expert_choice', 'soft')


@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """Configuration of one MoE feed-forward layer.

  Attributes:
    num_experts: E.
    top_k: K, choices per token. 'switch' needs 1 and 'gshard' needs 2.
    router: 'switch' (top-1, raw gate), 'gshard' (top-2, pair-renormalised
      gates), 'topk' (Mixtral: softmax over the top-k logits) or
      'expert_choice' (Zhou et al. 2022: each expert picks its tokens; plan
      K = E, capacity C = ceil(S·cf/E), not scaled by top_k) or 'sigmoid'
      (DeepSeek-V3: sigmoid affinities, top-k gates renormalised over the
      chosen experts, optional loss-free balancing bias), 'noisy_topk'
      (Shazeer et al. 2017: learned Gaussian noise, softmax over the top k;
      needs top_k < num_experts) or 'bpr' (V-MoE batch-prioritised: top-k
      softmax gates, capacity claimed in order of the top gate) or 'soft'
      (Puigcerver et al. 2023: each expert's slots are softmax-weighted
      averages of the group's tokens; no drops, no dispatcher, no aux loss;
      see core/soft_moe.py).
    dispatcher: 'index' (gathers into capacity buffers, the default),
      'fused' (the same capacity buffers, gathered one expert at a time
      inside the expert loop, which adds the outputs straight back: no
      K·cf copies of the tokens; faster for fine-grained layers on CPU, see
      benchmarks/RESULTS.md),
      'einsum' (one-hot GShard reference), 'dropless' (no capacity: sort by
      expert into expert-aligned blocks, tiled matmuls), 'dropless_fused'
      (the same blocks of token indices, gathered tile by tile inside the
      expert loop) or 'dropless_ragged'
      (no capacity: sort + jax.lax.ragged_dot, for backends with a grouped
      matmul kernel). Index, fused and einsum give the same results; the
      dropless ones match them when nothing is dropped.
    expert_type: 'gelu' or 'swiglu' expert MLP.
    d_ff: F, each expert's hidden width.
    capacity_factor: train capacity factor (ST-MoE recommends 1.25).
    eval_capacity_factor: capacity factor when train=False (ST-MoE: 2.0).
    min_capacity: lower bound on C, so tiny groups still route.
    capacity_scales_with_k: True: C = ceil(K·S·cf/E) (vmoe, MaxText);
      False: C = round(S·cf/E) (Switch, flaxformer). See core/capacity.py.
    group_size: S, tokens per routing group; None routes each sequence as a
      group (S = L) so results do not depend on the batch size.
    second_policy: GShard second-expert policy in training: 'all',
      'random' (route if 2·g2 > U) or 'sampling'.
    second_policy_eval: the same at eval; 'all' keeps eval deterministic.
    jitter_eps: multiplicative router-input jitter in training (Switch used
      1e-2); 0 disables it.
    load_balance_weight: α on the Switch load-balancing loss (1e-2).
    z_loss_weight: c_z on the router z-loss (ST-MoE: 1e-3).
    init_scale: variance-scaling factor of router and expert weights
      (Switch Table 3 found 0.1 much more stable than 1.0).
    fixed_capacity: None (capacity from the factor), or an absolute C per
      group used in training and eval alike (clamped to S; for causal
      expert choice, per chunk and clamped to causal_chunk).
    causal_routing: for 'expert_choice' and 'soft': True (default) uses the
      lookahead-free variant (core/expert_choice.py, core/soft_moe.py);
      False the paper's form over the whole group, which leaks the future in
      a decoder.
    allow_noncausal: the decoder refuses causal_routing=False unless this
      is True (e.g. to reproduce the leak on purpose).
    causal_chunk: Q, the window and buffer chunk of causal expert choice,
      and the chunk causal Soft MoE mixes; must divide the sequence length.
    bias_update_rate: γ of aux-loss-free balancing ('sigmoid' only; DeepSeek
      used 1e-3). > 0 gives each MoE layer a selection bias held in the
      training state and moved by ±γ after each step; 0: no bias.
    balance_loss_scope: where f and P of the load-balance loss are pooled:
      'global' (every group of the batch, the default and the original
      behaviour), 'micro_batch' (per data-parallel shard, then averaged) or
      'sequence' (per group, then averaged). See losses.py.
    importance_weight: weight of the importance CV² loss ('noisy_topk';
      Shazeer et al. used 0.1); 0: off.
    load_cv_weight: weight of the smooth load CV² loss ('noisy_topk'); 0: off.
    num_shared_experts: K_s always-on shared experts of width d_ff each
      (DeepSeekMoE), run as one dense FFN of width K_s·d_ff beside the
      routed experts; 0: none. See config/fine_grained.py for the split helper.
    shared_expert_gate: scale the shared experts' output per token by
      sigmoid(x·w_s), w_s [D] (Qwen1.5-MoE / Qwen2-MoE); False: gate 1.
    renormalize_top_k: 'topk' only. True: gates are the softmax over the k
      chosen logits (Mixtral); False: the full softmax's probabilities of the
      chosen k (DeepSeekMoE, Qwen1.5-MoE, OLMoE).
    slots_per_expert: P, slots per expert and group (chunk, when causal) of
      'soft'; E·P = causal_chunk gives top-1's expert FLOPs.
  """

  num_experts: int = 8
  top_k: int = 1
  router: str = 'switch'
  dispatcher: str = 'index'
  expert_type: str = 'gelu'
  d_ff: int = 1024
  capacity_factor: float = 1.25
  eval_capacity_factor: float = 2.0
  min_capacity: int = 4
  capacity_scales_with_k: bool = True
  group_size: int | None = None
  second_policy: str = 'random'
  second_policy_eval: str = 'all'
  jitter_eps: float = 0.0
  load_balance_weight: float = 1e-2
  z_loss_weight: float = 1e-3
  init_scale: float = 0.1
  fixed_capacity: int | None = None
  causal_routing: bool = True
  allow_noncausal: bool = False
  causal_chunk: int = 16
  bias_update_rate: float = 0.0
  balance_loss_scope: str = 'global'
  importance_weight: float = 0.0
  load_cv_weight: float = 0.0
  num_shared_experts: int = 0
  shared_expert_gate: bool = False
  renormalize_top_k: bool = True
  slots_per_expert: int = 1

  def __post_init__(self):
    check_positive('num_experts', self.num_experts)
    check_positive('top_k', self.top_k)
    check_positive('d_ff', self.d_ff)
    check_choice('router', self.router, ROUTERS)
    check_choice('dispatcher', self.dispatcher, tuple(DISPATCHERS))
    check_choice('expert_type', self.expert_type, EXPERT_TYPES)
    check_choice('second_policy', self.second_policy, routers.SECOND_POLICIES)
    check_choice('second_policy_eval', self.second_policy_eval,
                  routers.SECOND_POLICIES)
    if self.top_k > self.num_experts:
      raise UserInputError(
          f'top_k={self.top_k} must be <= num_experts={self.num_experts}; '
          'lower top_k or add experts.')
    wanted_k = _ROUTER_K.get(self.router)
    if wanted_k is not None and self.top_k != wanted_k:
      raise UserInputError(
          f'router={self.router!r} routes to exactly {wanted_k} expert(s) but '
          f"top_k={self.top_k}; set top_k={wanted_k} or use router='topk'.")
    for name in ('capacity_factor', 'eval_capacity_factor'):
      value = getattr(self, name)
      if (not isinstance(value, (int, float)) or isinstance(value, bool) or
          not value > 0):
        raise UserInputError(
            f'{name}={value!r} must be > 0 (e.g. 1.25 train, 2.0 eval); for '
            "no capacity limit use dispatcher='dropless'.")
    if not isinstance(self.min_capacity, int) or self.min_capacity < 1:
      raise UserInputError(f'min_capacity={self.min_capacity!r} must be >= 1.')
    if self.group_size is not None:
      check_positive('group_size', self.group_size)
    for name in ('jitter_eps', 'load_balance_weight', 'z_loss_weight'):
      if not getattr(self, name) >= 0:
        raise UserInputError(f'{name}={getattr(self, name)!r} must be >= 0.')
    check_positive('init_scale', self.init_scale, (int, float))
    self._check_zoo()

  def _check_zoo(self) -> None:
    """Checks of the fields the router zoo added (all off by default)."""
    if self.fixed_capacity is not None:
      check_positive('fixed_capacity', self.fixed_capacity)
    check_positive('causal_chunk', self.causal_chunk)
    check_choice('balance_loss_scope', self.balance_loss_scope,
                  losses.BALANCE_SCOPES)
    if (not isinstance(self.bias_update_rate, (int, float)) or
        not self.bias_update_rate >= 0):
      raise UserInputError(
          f'bias_update_rate={self.bias_update_rate!r} must be >= 0 (e.g. '
          '1e-3; 0 turns loss-free balancing off).')
    for name in ('importance_weight', 'load_cv_weight'):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not value >= 0:
        raise UserInputError(f'{name}={value!r} must be >= 0.')
      if value > 0 and self.router != 'noisy_topk':
        raise UserInputError(
            f"{name}={value} needs router='noisy_topk' (router is "
            f'{self.router!r}); set it to 0.')
    if (not isinstance(self.num_shared_experts, int) or
        self.num_shared_experts < 0):
      raise UserInputError(
          f'num_shared_experts={self.num_shared_experts!r} must be an int >= 0.')
    for name in ('shared_expert_gate', 'renormalize_top_k', 'causal_routing',
                 'allow_noncausal'):
      check_bool(name, getattr(self, name))
    if self.shared_expert_gate and not self.num_shared_experts:
      raise UserInputError(
          'shared_expert_gate=True gates the shared experts, but '
          'num_shared_experts=0; set num_shared_experts >= 1 or the gate off.')
    if not self.renormalize_top_k and self.router != 'topk':
      raise UserInputError(
          f"renormalize_top_k=False needs router='topk' (router is "
          f'{self.router!r}); set it to True.')
    if self.router == 'noisy_topk' and self.top_k >= self.num_experts:
      raise UserInputError(
          f"router='noisy_topk' needs top_k < num_experts (the load loss "
          f'compares each expert with the k-th best other); top_k='
          f'{self.top_k}, num_experts={self.num_experts}.')
    if self.bias_update_rate > 0 and self.router != 'sigmoid':
      raise UserInputError(
          f'bias_update_rate={self.bias_update_rate} needs '
          f"router='sigmoid' (router is {self.router!r}); set it to 0.")
    check_positive('slots_per_expert', self.slots_per_expert)
    if self.slots_per_expert > 1 and self.router != 'soft':
      raise UserInputError(
          f'slots_per_expert={self.slots_per_expert} needs '
          f"router='soft' (router is {self.router!r}); set it to 1.")
    if self.router in NONCAUSAL_CAPABLE and self.causal_routing and (
        self.group_size is not None):
      raise UserInputError(
          f'causal {self.router} routes each sequence as its own group; '
          f'unset group_size (now {self.group_size}) or set '
          'causal_routing=False.')
    if self.router == 'expert_choice':
      if not DISPATCHERS[self.dispatcher].needs_capacity:
        raise UserInputError(
            f"router='expert_choice' fills fixed-size expert buffers; "
            f"dispatcher={self.dispatcher!r} has none: use 'index', 'fused' "
            "or 'einsum'.")

  def capacity(self, group_size: int, train: bool) -> int | None:
    """C for a group of `group_size` tokens; None for the dropless dispatcher."""
    if not DISPATCHERS[self.dispatcher].needs_capacity:
      return None
    cf = self.capacity_factor if train else self.eval_capacity_factor
    if self.router == 'expert_choice':
      # Zhou et al.: C = S·c/E, one pick per expert, so not scaled by K;
      # the causal variant's buffers are per chunk of Q positions.
      if self.causal_routing:
        group_size = min(group_size, self.causal_chunk)
      if self.fixed_capacity is not None:
        return min(self.fixed_capacity, group_size)
      return capacity_lib.expert_capacity(
          group_size, self.num_experts, 1, cf, self.min_capacity)
    if self.fixed_capacity is not None:
      return min(self.fixed_capacity, group_size)
    return capacity_lib.expert_capacity(
        group_size, self.num_experts, self.top_k, cf, self.min_capacity,
        self.capacity_scales_with_k)

  def expert_passes_per_token(self, group_size: int) -> float:
    """Expert MLP passes per token, on average: the K of parameter counts.

    top_k for token-choice routers. Expert choice fills E·C slots per
    group (per chunk when causal) of S tokens, so E·C/S; Soft MoE runs
    each of its E·P slots per group (chunk) once, so E·P/S.
    """
    span = (min(group_size, self.causal_chunk) if self.causal_routing
            else group_size)
    if self.router == 'expert_choice':
      return self.num_experts * self.capacity(group_size, train=True) / span
    if self.router == 'soft':
      return self.num_experts * self.slots_per_expert / span
    return self.top_k

  @property
  def num_router_outputs(self) -> int:
    """Columns of router_kernel: E, or the E·P slots of Soft MoE."""
    return self.num_experts * (self.slots_per_expert if self.router == 'soft'
                               else 1)

  @property
  def has_router_bias(self) -> bool:
    """Whether each MoE layer carries a loss-free balancing bias."""
    return self.router == 'sigmoid' and self.bias_update_rate > 0

  def router_fn(self, train: bool) -> routers.Router:
    """The pure router, with this config's options bound."""
    fn = self._router_fn(train)
    if self.balance_loss_scope != 'global':
      fn = functools.partial(fn, balance_fn=functools.partial(
          losses.scoped_load_balance_loss, scope=self.balance_loss_scope))
    return fn

  def _router_fn(self, train: bool) -> routers.Router:
    if self.router == 'switch':
      return routers.switch_top1
    if self.router == 'gshard':
      policy = self.second_policy if train else self.second_policy_eval
      return functools.partial(routers.gshard_top2, second_policy=policy)
    if self.router == 'topk':
      return functools.partial(routers.top_k, k=self.top_k,
                               renormalize=self.renormalize_top_k)
    if self.router == 'sigmoid':
      return functools.partial(sigmoid_router.sigmoid_top_k, k=self.top_k)
    if self.router == 'noisy_topk':
      return functools.partial(noisy_topk.noisy_top_k, k=self.top_k)
    if self.router == 'bpr':
      return functools.partial(bpr.bpr_top_k, k=self.top_k)
    if self.router == 'expert_choice':
      return functools.partial(expert_choice.expert_choice,
                               causal=self.causal_routing,
                               chunk=self.causal_chunk)
    raise AssertionError(self.router)  # __post_init__ checked the name.
