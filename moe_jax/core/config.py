"""MoEConfig: the knobs every MoE layer shares, validated in one place.

A router's own knobs live in its spec's Options (core/routing/); this file
never names a router.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from moe_jax.core import adaptive_balance as adaptive_lib
from moe_jax.core import capacity as capacity_lib
from moe_jax.core import config_checks as checks
from moe_jax.core import losses
from moe_jax.core import routing
from moe_jax.core.dispatch import DISPATCHERS
from moe_jax.core.experts import EXPERT_TYPES
from moe_jax.errors import UserInputError, check_choice, check_positive



@dataclasses.dataclass(frozen=True)
class MoEConfig:
  """Configuration of one MoE feed-forward layer.

  Attributes:
    num_experts: E.
    top_k: K, choices per token; a router may fix it (RouterSpec.fixed_k).
    router: a registered router's name (core/routing/, one file each, or
      one registered outside moe_jax; default: routing.DEFAULT, Switch
      top-1). Its file's docstring says what it does; its spec says what
      else it needs.
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
    expert_type: 'gelu', 'swiglu' or 'swiglu_clamped' (gpt-oss's) expert
      MLP (core/experts/mlp.py).
    d_ff: F, each expert's hidden width.
    capacity_factor: train capacity factor (ST-MoE recommends 1.25).
    eval_capacity_factor: capacity factor when train=False (ST-MoE: 2.0).
    min_capacity: lower bound on C, so tiny groups still route.
    capacity_scales_with_k: True: C = ceil(K·S·cf/E) (vmoe, MaxText);
      False: C = round(S·cf/E) (Switch, flaxformer). See core/capacity.py.
    group_size: S, tokens per routing group; None routes each sequence as a
      group (S = L) so results do not depend on the batch size.
    jitter_eps: multiplicative router-input jitter in training (Switch used
      1e-2); 0 disables it.
    load_balance_weight: α on the Switch load-balancing loss (1e-2).
    z_loss_weight: c_z on the router z-loss (ST-MoE: 1e-3).
    init_scale: variance-scaling factor of router and expert weights
      (Switch Table 3 found 0.1 much more stable than 1.0).
    fixed_capacity: None (capacity from the factor), or an absolute C per
      group used in training and eval alike (clamped to S; for causal
      expert choice, per chunk and clamped to causal_chunk).
    causal_routing: for routers whose paper form reads the whole group
      (RouterSpec.group_wide: expert choice, Soft MoE): True (default) uses
      their lookahead-free variant; False the paper's form, which leaks the
      future in a decoder. Shared, not a router option: it is a property of
      the model (a causal decoder), whichever router runs in it.
    allow_noncausal: the decoder refuses causal_routing=False unless this
      is True (e.g. to reproduce the leak on purpose).
    causal_chunk: Q, the window and buffer chunk of causal expert choice,
      and the chunk causal Soft MoE mixes; must divide the sequence length.
    balance_loss_scope: where f and P of the load-balance loss are pooled:
      'global' (every group of the batch, the default and the original
      behaviour; with train.grad_accum_steps > 1, every micro-batch of the
      step too), 'micro_batch' (per data-parallel shard, and per
      accumulation micro-batch, then averaged) or 'sequence' (per group,
      then averaged). See losses.py.
    num_shared_experts: K_s always-on shared experts of width d_ff each
      (DeepSeekMoE), run as one dense FFN of width K_s·d_ff beside the
      routed experts; 0: none. See config/fine_grained.py for the split helper.
    shared_expert_gate: scale the shared experts' output per token by
      sigmoid(x·w_s), w_s [D] (Qwen1.5-MoE / Qwen2-MoE); False: gate 1.
    num_null_experts: N zero-compute null experts (AdaMoE, Zeng et al.
      2024; MoE++, Jin et al. 2024) that join the routing: the router kernel
      has E + N outputs, top-k picks among all of them, and a choice of a
      null expert adds nothing and is not dispatched (no capacity slot, no
      dropless row), so a token uses 0..K real experts. Gates are
      renormalised over the real choices only (AdaMoE). Capacity and the
      balance loss count the E + N outputs, and parameter counts assume the
      balanced share K·E/(E+N) real passes per token (the measured one is
      the 'experts_per_token_mean' metric). Only routers whose spec says
      null_experts (topk, gshard, switch) take them; 0: none.
    router_options: the router's own options: None (its defaults), its
      spec's Options instance, or a mapping {router name: {field: value}}
      as a ConfigDict's `moe.router_options` holds it. Entries for other
      routers must be at their defaults (a setting that does nothing is a
      mistake). After construction it is the chosen router's Options.
    adaptive_balance: axlearn's adaptive balance-loss weight: None (off),
      an adaptive_balance.AdaptiveBalance, or a mapping of its fields (as
      the ConfigDict's `moe.adaptive_balance` holds them). With log_step > 0
      each layer's weight becomes load_balance_weight·exp(ℓ), ℓ moved ±ε
      per step by its averaged over-capacity ratio (core/adaptive_balance.py).
    ep_buffer_factor: dropless dispatchers under an expert axis of P
      devices: each device's all-to-all buffers hold f times the balanced
      load (M = G_l·S·K choices in all, M/P per slot) instead of the worst
      case P·M (moe_jax/parallel/dropless_ep.py); None or 0: the worst case.
      MaxText's ragged_buffer_factor; f >= P is the worst case.
    ep_overflow: what happens to choices the bounded buffers cannot hold
      (each layer counts them, aux 'ep_overflow_rows'): 'retry' (the train
      step is rerun with the worst-case buffers, so nothing is dropped:
      moe_jax/train/ep_retry.py) or 'drop' (dropped like capacity drops).
    use_bias: biases on the router's logits (router_bias_logits [E]) and
      on the routed experts' projections (bi, bi_gate [E, F], bo [E, D];
      gpt-oss); shared experts have none.
  """

  num_experts: int = 8
  top_k: int = 1
  router: str = routing.DEFAULT
  dispatcher: str = 'index'
  expert_type: str = 'gelu'
  d_ff: int = 1024
  capacity_factor: float = 1.25
  eval_capacity_factor: float = 2.0
  min_capacity: int = 4
  capacity_scales_with_k: bool = True
  group_size: int | None = None
  jitter_eps: float = 0.0
  load_balance_weight: float = 1e-2
  z_loss_weight: float = 1e-3
  init_scale: float = 0.1
  fixed_capacity: int | None = None
  causal_routing: bool = True
  allow_noncausal: bool = False
  causal_chunk: int = 16
  balance_loss_scope: str = 'global'
  num_shared_experts: int = 0
  shared_expert_gate: bool = False
  num_null_experts: int = 0
  router_options: Any = None
  adaptive_balance: Any = None
  ep_buffer_factor: float | None = None
  ep_overflow: str = 'retry'
  use_bias: bool = False

  def __post_init__(self):
    check_positive('num_experts', self.num_experts)
    check_positive('top_k', self.top_k)
    check_positive('d_ff', self.d_ff)
    spec = routing.get(self.router)
    # Frozen: the resolved options replace what was given, once.
    object.__setattr__(self, 'router_options',
                       checks.resolve_router_options(self, spec))
    object.__setattr__(self, 'adaptive_balance',
                       adaptive_lib.resolve(self.adaptive_balance))
    check_choice('dispatcher', self.dispatcher, tuple(DISPATCHERS))
    check_choice('expert_type', self.expert_type, EXPERT_TYPES)
    checks.check_null_experts(self, spec)
    if self.top_k > self.num_experts + self.num_null_experts:
      raise UserInputError(
          f'top_k={self.top_k} must be <= num_experts={self.num_experts}'
          + (f' + num_null_experts={self.num_null_experts}'
             if self.num_null_experts else '') +
          '; lower top_k or add experts.')
    if spec.fixed_k is not None and self.top_k != spec.fixed_k:
      hint = (f" or use router={spec.any_k_router!r}" if spec.any_k_router
              else '')
      raise UserInputError(
          f'router={self.router!r} routes to exactly {spec.fixed_k} '
          f'expert(s) but top_k={self.top_k}; set top_k={spec.fixed_k}{hint}.')
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
    checks.check_shared_fields(self, spec)
    checks.check_ep_buffer(self)
    if spec.check is not None:
      spec.check(self)
    adaptive_lib.check(self)

  @property
  def spec(self) -> routing.RouterSpec:
    """The router's registered spec."""
    return routing.get(self.router)

  @property
  def reads_future(self) -> bool:
    """Whether routing lets later tokens of a group change earlier outputs
    (a group-wide router in its paper form)."""
    return self.spec.group_wide and not self.causal_routing

  def capacity(self, group_size: int, train: bool) -> int | None:
    """C for a group of `group_size` tokens; None for the dropless dispatcher."""
    if not DISPATCHERS[self.dispatcher].needs_capacity:
      return None
    cf = self.capacity_factor if train else self.eval_capacity_factor
    spec = self.spec
    if spec.capacity is not None:
      return spec.capacity(self, group_size, cf)
    if self.fixed_capacity is not None:
      return min(self.fixed_capacity, group_size)
    # Null experts count as experts here: at balance each of the E + N
    # outputs gets K·S/(E + N) choices, which is a real expert's load.
    return capacity_lib.expert_capacity(
        group_size, self.num_experts + self.num_null_experts, self.top_k, cf,
        self.min_capacity, self.capacity_scales_with_k)

  def expert_passes_per_token(self, group_size: int) -> float:
    """Expert MLP passes per token, on average: the K of parameter counts.

    top_k for token-choice routers; a router that fills slots instead
    (expert choice, Soft MoE) says so in its spec.
    """
    spec = self.spec
    if spec.passes_per_token is not None:
      return spec.passes_per_token(self, group_size)
    # With null experts, the balanced share of choices that are real (what
    # the balance loss over E + N outputs steers toward); the measured mean
    # is the 'experts_per_token_mean' metric.
    e, n = self.num_experts, self.num_null_experts
    return self.top_k * e / (e + n) if n else self.top_k

  @property
  def num_router_outputs(self) -> int:
    """Columns of router_kernel: E, or what the router asks (Soft MoE's
    E·P slots)."""
    spec = self.spec
    if spec.router_outputs is not None:
      return spec.router_outputs(self)
    return self.num_experts + self.num_null_experts

  @property
  def extra_params(self) -> tuple[routing.ExtraParam, ...]:
    """The router's arrays beside router_kernel, for this config (with the
    adaptive balance weight's state when it is on)."""
    return (tuple(self.spec.extra_params(self)) +
            adaptive_lib.extra_params(self.adaptive_balance))

  @property
  def has_router_bias(self) -> bool:
    """Whether each MoE layer carries router state (arrays the optimizer
    does not train, e.g. a loss-free balancing bias)."""
    return any(not p.trainable for p in self.extra_params)

  def update_state(self, state: dict[str, Any],
                   aux: dict[str, Any]) -> dict[str, Any]:
    """The router state after a training step (e.g. a moved selection
    bias), from the state {name: array} and the step's aux of this layer."""
    new = {}
    own = [p.name for p in self.spec.extra_params(self) if not p.trainable]
    if own:
      new.update(self.spec.update_state({n: state[n] for n in own}, aux,
                                        self.router_options))
    if self.adaptive_balance.on:  # moe_apply already stepped it (in aux).
      new.update({n: aux[n] for n in adaptive_lib.STATE})
    return new

  @property
  def balance_fn(self):
    """(probs, expert_index) -> the load-balance loss, pooled as
    balance_loss_scope says."""
    if self.balance_loss_scope == 'global':
      return losses.load_balance_loss
    return functools.partial(losses.scoped_load_balance_loss,
                             scope=self.balance_loss_scope)

  def route(self, inputs: routing.RouterInputs, *, train: bool,
            capacity: int | None, key=None, balance_fraction=None):
    """The router on `inputs`: (plan, aux), this config's options bound.

    balance_fraction: float [N] the f of a 'global' balance loss taken from
    the whole step's batch (gradient accumulation's micro-batches,
    train/accumulate.py), or None: this batch's own.
    """
    balance_fn = self.balance_fn
    if balance_fraction is not None and self.balance_loss_scope == 'global':
      balance_fn = functools.partial(losses.load_balance_loss,
                                     fraction=balance_fraction)
    return self.spec.route(inputs, self, train=train, capacity=capacity,
                           key=key, balance_fn=balance_fn)
