"""The router registry: one RouterSpec per router name.

A router is a pure function (router logits in, (plan, aux) out; see
common.py) plus the facts the rest of moe_jax needs about it: its options,
its parameters beside the router kernel, how many experts a token costs,
whether it reads future tokens, its capacity rule and the losses it adds.
The spec carries all of them, so moe_apply, the layer, the model's checks,
the tracer and the config read the spec and never a router's name. A new
router is one file that calls `register` (see switch.py for the smallest).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax

from moe_jax.errors import UserInputError

# Shape letters: G groups, S tokens per group, E experts, D model width,
# N router outputs (E, or E·P slots for Soft MoE).


@dataclasses.dataclass(frozen=True)
class NoOptions:
  """The options of a router that has none."""


@dataclasses.dataclass(frozen=True)
class ExtraParam:
  """An array a router reads beside router_kernel, owned by the MoE layer.

  Attributes:
    name: the layer attribute and params key (kept stable: checkpoints
      store it).
    shape: (MoEConfig, D) -> its shape.
    init: a jax initializer (key, shape, dtype) -> array. A state gets key
      None: it starts deterministic and draws nothing from the layer's RNG.
    axes: logical axis names, one per dimension (parallel/rules.py).
    trainable: True: an nnx.Param the optimizer trains; False: router state
      (e.g. a selection bias) outside the optimizer, moved after each
      training step by the spec's update_state and checkpointed with it.
  """

  name: str
  shape: Callable[[Any, int], tuple[int, ...]]
  init: Callable[..., jax.Array]
  axes: tuple[str | None, ...]
  trainable: bool = True


class RouterInputs(NamedTuple):
  """What a router may read.

  Attributes:
    logits: float32 [G, S, N], router_in @ router_kernel.
    router_in: float32 [G, S, D], the router's input (after jitter).
    params: the spec's extra parameters and state, by name.
    token_ids: int32 [G, S] the tokens' vocabulary ids, or None when the
      caller has none (a bare moe_apply on activations).
    replay: int32 [G, S, K] choices to take instead of the router's own
      (router replay; common.choose), or None. Only specs with
      replayable=True receive it.
  """

  logits: jax.Array
  router_in: jax.Array
  params: dict[str, jax.Array]
  token_ids: jax.Array | None = None
  replay: jax.Array | None = None


@dataclasses.dataclass(frozen=True)
class RouterSpec:
  """Everything moe_jax knows about one router.

  Attributes:
    name: the value of `moe.router`.
    route: (inputs: RouterInputs, config: MoEConfig, *, train, capacity,
      key, balance_fn) -> (plan, aux). aux holds the unweighted
      'load_balance_loss' and 'z_loss' and the routing metrics, and may
      hold plan.ROUTED, the choices meant for a real expert before
      capacity (default: every choice of a real expert).
    options: a frozen dataclass of the router's own knobs, with defaults;
      given as `moe.router_options.<name>.<field>` in a ConfigDict. Its
      __post_init__ checks each field.
    fixed_k: the K the router always uses (switch: 1), or None.
    any_k_router: the registered router that routes like this one at any K,
      used when fine-graining changes K (config/fine_grained.py).
    group_wide: its paper form lets later tokens of a group change earlier
      outputs; `moe.causal_routing` then selects its lookahead-free form,
      and a decoder refuses the group-wide one unless allow_noncausal.
    check: (config) -> None, raising UserInputError: checks that involve
      shared fields (e.g. K < E, a capacity dispatcher).
    capacity: (config, S, cf) -> C, where the router's rule differs from
      the shared one (config.MoEConfig.capacity); None: the shared rule.
    passes_per_token: (config, S) -> expert MLP passes per token, on
      average (the K of parameter counts); None: top_k.
    router_outputs: (config) -> N, router_kernel's columns; None: E.
    extra_params: (config) -> tuple of ExtraParam.
    update_state: (state {name: array}, aux, options) -> new state, for
      specs with non-trainable extra params; run after each training step.
    aux_terms: (options field, aux key) pairs: aux_loss adds
      options.field · aux[key] when the weight is > 0.
    dispatcher: None: the plan is a RoutingPlan, moved by `moe.dispatcher`;
      else the dispatcher that moves this router's own plan type (the plan's
      arrays must lead with G, so expert parallelism can split them).
    balance_loss: whether aux['load_balance_loss'] can steer the routing
      (False where it is 0 or constant: expert choice, Soft MoE, uniform);
      a balance-loss weight that adapts to drops refuses a router without.
    eval_only: options fields that change how a checkpoint is evaluated but
      not what it holds (moe_jax/train/evaluate.py lets them differ).
    null_experts: its route honours `moe.num_null_experts` (router logits
      over E + N outputs, null choices passed to build_plan as num_null);
      MoEConfig refuses null experts for the others.
    legacy_fields: {old flat `moe.<field>`: its options field}, for options
      that were MoEConfig fields before the registry: old configs get a
      one-line error naming the new place, old checkpoints are translated
      (moe_jax/config/renames.py). A new router has none.
    routes_by_position: the router's choice for a token depends on the
      token's position in its group (uniform), so decoding one token at a
      time (moe_jax/generation) would route it as position 0 and is refused.
    ranked: the plan's K columns are a token's choices in rank order
      (column 0 its first choice). False where column e is expert e,
      chosen or not (ReLU routing, expert choice): routing traces then
      order each token's columns by router probability, its chosen
      experts first, so that their K axis reads as a rank too.
    replayable: the router selects K experts per token through
      common.choose, so router replay can force its choices
      (RouterInputs.replay); others refuse replay with one line.
    totals: aux entries that are totals over the batch (e.g. the sign
      rule's 'expert_load'), which gradient accumulation sums over its
      micro-batches; every other entry is a mean over them.
    batch_pooled: (config) -> None, or the words for a loss or state of the
      router that pools the whole batch other than the balance loss (whose
      pooling gradient accumulation handles): a micro-batch cannot compute
      it, so train.grad_accum_steps > 1 is refused with those words.
  """

  name: str
  route: Callable[..., tuple[Any, dict[str, jax.Array]]]
  options: type = NoOptions
  fixed_k: int | None = None
  any_k_router: str | None = None
  group_wide: bool = False
  check: Callable[[Any], None] | None = None
  capacity: Callable[[Any, int, float], int | None] | None = None
  passes_per_token: Callable[[Any, int], float] | None = None
  router_outputs: Callable[[Any], int] | None = None
  extra_params: Callable[[Any], tuple[ExtraParam, ...]] = lambda config: ()
  update_state: Callable[..., dict[str, jax.Array]] | None = None
  aux_terms: tuple[tuple[str, str], ...] = ()
  dispatcher: Any = None
  balance_loss: bool = True
  eval_only: tuple[str, ...] = ()
  legacy_fields: tuple[tuple[str, str], ...] = ()
  replayable: bool = False
  ranked: bool = True
  routes_by_position: bool = False
  null_experts: bool = False
  totals: tuple[str, ...] = ()
  batch_pooled: Callable[[Any], str | None] = lambda config: None

  @property
  def discrete(self) -> bool:
    """Whether the plan is a RoutingPlan of (expert, weight, slot) choices."""
    return self.dispatcher is None


_REGISTRY: dict[str, RouterSpec] = {}


def register(spec: RouterSpec) -> RouterSpec:
  """Adds a router; its name becomes a valid `moe.router`.

  Register before the config is built (get_default_config reads the
  registry for `moe.router_options`). A name registered again from the same
  module (a module imported twice) replaces its spec; from another module
  it is an error, so two routers cannot silently share a name.
  """
  if not (dataclasses.is_dataclass(spec.options) and
          spec.options.__dataclass_params__.frozen):
    raise TypeError(f'router {spec.name!r}: options must be a frozen '
                    'dataclass.')
  old = _REGISTRY.get(spec.name)
  if old is not None and old.route.__module__ != spec.route.__module__:
    raise ValueError(f'router {spec.name!r} is already registered.')
  _REGISTRY[spec.name] = spec
  return spec


def get(name: str) -> RouterSpec:
  """The spec of `moe.router`; a one-line error naming the valid ones."""
  if name not in _REGISTRY:
    raise UserInputError(
        f'router={name!r} is not valid; allowed values: '
        f'{", ".join(map(repr, _REGISTRY))}.')
  return _REGISTRY[name]


def names() -> tuple[str, ...]:
  """Registered routers, in registration order."""
  return tuple(_REGISTRY)
