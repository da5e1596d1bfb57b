"""The MoE feed-forward layer as one pure function of (params, tokens)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from moe_jax.core import adaptive_balance
from moe_jax.core.config import MoEConfig
from moe_jax.core.dispatch import (DISPATCHERS, ExpertInputs, RunExperts,
                                   run_local)
from moe_jax.core.experts import EXPERT_FNS, is_gated
from moe_jax.core.plan import ROUTED, RoutingPlan
from moe_jax.core.routing import RouterInputs
from moe_jax.core.routing.common import multiplicative_jitter
from moe_jax.errors import UserInputError

# The stacked expert weights (and input biases) the expert functions read;
# the other params feed the router, or bo the combine's bias term.
EXPERT_PARAMS = ('wi', 'wi_gate', 'wo', 'bi', 'bi_gate')


def group_tokens(x: jax.Array, group_size: int | None) -> jax.Array:
  """[..., L, D] -> [G, S, D]; S = group_size, or L when it is None."""
  d = x.shape[-1]
  tokens = x.reshape(-1, d)
  t = tokens.shape[0]
  s = group_size or (x.shape[-2] if x.ndim >= 2 else t)
  if t % s:
    raise UserInputError(
        f'group_size={s} does not divide the {t} tokens of the batch; pick a '
        'group_size that divides batch_size·seq_len.')
  return tokens.reshape(t // s, s, d)


def shared_experts(params: dict[str, jax.Array], xg: jax.Array,
                   expert_type: str) -> jax.Array:
  """The K_s shared experts (DeepSeekMoE, Dai et al. 2024), every token.

  K_s experts of width F summed with gate 1 are one MLP of width K_s·F, so
  they run as a single expert (E = 1) of the same expert function.

  Args:
    params: shared_wi [D, K_s·F], shared_wo [K_s·F, D] (+ shared_wi_gate;
      + shared_gate [D, 1] for the Qwen-MoE gate).
    xg: [G, S, D].
  """
  names = ('wi', 'wo') + (('wi_gate',) if is_gated(expert_type) else ())
  weights = {n: params['shared_' + n][None] for n in names}  # E = 1
  flat = xg.reshape(1, -1, xg.shape[-1])
  out = EXPERT_FNS[expert_type](weights, ExpertInputs(flat)).reshape(xg.shape)
  if 'shared_gate' in params:  # Qwen-MoE: a per-token sigmoid gate [G, S, 1].
    out = out * jax.nn.sigmoid(xg @ params['shared_gate'].astype(xg.dtype))
  return out


def output_bias(bo: jax.Array, plan: RoutingPlan, dtype) -> jax.Array:
  """Σ_k w_k · bo[e_k], the output biases of each token's experts [G, S, D].

  An expert's output bias is scaled by its gate like the rest of its
  output (gpt-oss adds it before the gate), and adding it here, after the
  combine, keeps it out of every dispatcher layout and of the partial sums
  over a split F. Dropped choices weigh 0; a null choice (index >= E)
  reads a clipped row and weighs 0 too.
  """
  rows = jnp.take(bo.astype(dtype), plan.expert_index, axis=0, mode='clip')
  return jnp.einsum('gsk,gskd->gsd', plan.combine_weights.astype(dtype), rows)


def route(params: dict[str, jax.Array], logits: jax.Array,
          router_in: jax.Array, config: MoEConfig, *, train: bool,
          key: jax.Array | None = None,
          token_ids: jax.Array | None = None,
          replay: jax.Array | None = None,
          balance_fraction: jax.Array | None = None):
  """The config's router on one batch of groups: (plan, aux).

  Args:
    params: the layer's params; the router reads its spec's extra ones.
    logits: float32 [G, S, N] router logits.
    router_in: float32 [G, S, D] the router's input.
    config: the layer's MoEConfig.
    train: selects the train capacity factor and the router's train mode.
    key: PRNG key for routers that draw noise or sample.
    token_ids: int32 [G, S] vocabulary ids, for routers that read them.
    replay: int [G, S, K] choices that replace the router's own (router
      replay: moe_jax/analysis/replay.py), for replayable routers.
    balance_fraction: float [N] the global f of a 'global' balance loss
      (see moe_apply), or None.
  """
  if replay is not None:
    check_replayable(config)
    if replay.shape[-1] != config.top_k:
      raise UserInputError(
          f'the replayed choices have K={replay.shape[-1]} per token but the '
          f'layer routes top_k={config.top_k}; replay a trace of a model '
          'with the same top_k.')
  capacity = config.capacity(logits.shape[1], train)
  extras = {p.name: params[p.name] for p in config.extra_params}
  return config.route(
      RouterInputs(logits, router_in, extras, token_ids, replay),
      train=train, capacity=capacity, key=key,
      balance_fraction=balance_fraction)


def check_replayable(config: MoEConfig) -> None:
  """A one-line error unless the layer's router can replay choices."""
  if not config.spec.replayable:
    raise UserInputError(
        f'router={config.router!r} cannot replay recorded choices (it does '
        'not pick K experts per token); replay works with the token-choice '
        'routers (switch, gshard, topk, sigmoid, deepseek, noisy_topk, bpr).')


def moe_apply(params: dict[str, jax.Array], x: jax.Array, config: MoEConfig, *,
              train: bool = False, key: jax.Array | None = None,
              dtype=None, return_routing: bool = False,
              run_experts: RunExperts = run_local,
              token_ids: jax.Array | None = None,
              replay: jax.Array | None = None,
              balance_fraction: jax.Array | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Routes tokens to experts and combines their outputs.

  Args:
    params: router_kernel [D, N] (N = config.num_router_outputs: E, or
      Soft MoE's E·P slot logits) plus the expert weights (wi, wo, and
      wi_gate for SwiGLU; see core/experts/; with moe.use_bias also bi,
      bi_gate, bo and router_bias_logits [N]); the router's extra arrays
      (config.extra_params: e.g. noise_kernel [D, E] for noisy top-k,
      router_bias [E] for loss-free balancing, a state whose gradient is
      cut); shared_wi/shared_wo (and shared_wi_gate) for shared experts.
    x: [..., L, D] tokens (e.g. [B, L, D]).
    config: the layer's MoEConfig.
    train: selects the train capacity factor, jitter and the router's train
      mode (e.g. GShard's second policy).
    key: PRNG key, needed when training uses jitter or a random policy.
    dtype: compute dtype of the experts (default x.dtype). The router always
      runs in float32.
    return_routing: also return the routing decision (for routing traces,
      moe_jax.analysis.trace, and tests). Off by default; it changes nothing
      else.
    run_experts: dispatch -> experts -> combine. The default runs them on the
      arrays as given; under a mesh, pass the expert-parallel exchange
      (moe_jax.parallel.expert_parallel.run_experts, which MoELayer and
      moe_jax.moe_apply pass), or a partitioner may all-gather the tokens.
    token_ids: int [..., L] the tokens' vocabulary ids (shaped like x
      without D), for routers that read them (e.g. hash routing); None:
      routers see activations only.
    replay: int [..., L, K] expert choices to take instead of the router's
      (router replay: the router still scores, so gates, losses and
      metrics are its own and take gradients; capacity still applies);
      None: the router chooses.
    balance_fraction: float [N] (N = config.num_router_outputs) the share
      of a whole training step's choices each router output got, for a
      micro-batch of gradient accumulation: a 'global' balance loss takes
      its f from it instead of from x's own choices (losses.py,
      moe_jax/train/accumulate.py); None: from x's own.

  Returns:
    y: like x, the MoE output (0 for tokens every expert dropped).
    aux: 'aux_loss' (α·load_balance + c_z·z, add it to the training loss),
      the unweighted 'load_balance_loss' and 'z_loss', and routing metrics.
      With return_routing, also 'routing': {'plan': the RoutingPlan
      ([G, S, K] arrays; None for a router whose plan is not one, such as
      Soft MoE's dense mixing), 'logits': float32 [G, S, N] router logits,
      'routed': bool [G, S, K], the choices the router meant to send to a
      real expert before capacity (core/plan.py, ROUTED; None with the
      plan)}.
  """
  dtype = dtype or x.dtype
  xg = group_tokens(x, config.group_size)  # [G, S, D]
  jitter_key = route_key = None
  if key is not None:
    jitter_key, route_key = jax.random.split(key)
  router_in = xg.astype(jnp.float32)
  if train and config.jitter_eps > 0:
    if key is None:
      raise UserInputError('jitter_eps > 0 needs a PRNG key in training.')
    router_in = multiplicative_jitter(router_in, jitter_key, config.jitter_eps)
  logits = router_in @ params['router_kernel'].astype(jnp.float32)  # [G,S,N]
  if 'router_bias_logits' in params:  # moe.use_bias (gpt-oss's router).
    logits = logits + params['router_bias_logits'].astype(jnp.float32)
  if token_ids is not None:
    token_ids = group_tokens(token_ids[..., None],
                             config.group_size)[..., 0]  # [G, S]

  if replay is not None:
    replay = group_tokens(replay, config.group_size)  # [G, S, K]
  plan, aux = route(params, logits, router_in, config, train=train,
                    key=route_key, token_ids=token_ids, replay=replay,
                    balance_fraction=balance_fraction)
  routed = aux.pop(ROUTED, None)  # Not a metric: only traces read it.
  expert_params = {k: v for k, v in params.items() if k in EXPERT_PARAMS}
  # A router with its own plan type brings the dispatcher that moves it.
  dispatcher = config.spec.dispatcher or DISPATCHERS[config.dispatcher]
  out = run_experts(xg.astype(dtype), plan, expert_params, dispatcher,
                    EXPERT_FNS[config.expert_type])

  if 'bo' in params:
    out = out + output_bias(params['bo'], plan, dtype)
  if 'shared_wi' in params:  # Always-on shared experts: one dense FFN.
    out = out + shared_experts(params, xg.astype(dtype), config.expert_type)

  # The size of the router logits, which the z-loss exists to control
  # (ST-MoE Sec. 3.1); logged, not trained on.
  sg_logits = jax.lax.stop_gradient(logits)
  aux['router_logit_max'] = jnp.max(jnp.abs(sg_logits))
  aux['router_logsumexp'] = jnp.mean(jax.nn.logsumexp(sg_logits, axis=-1))
  balance_weight = config.load_balance_weight
  if config.adaptive_balance.on:  # axlearn's weight, moved by drops.
    scale, state = adaptive_balance.layer_scale(
        params, aux, config.adaptive_balance, train=train)
    aux.update(state)  # The state after the step, for update_state.
    balance_weight = balance_weight * scale
    aux['balance_weight'] = balance_weight
  aux['aux_loss'] = (balance_weight * aux['load_balance_loss'] +
                     config.z_loss_weight * aux['z_loss'])
  for weight_field, loss in config.spec.aux_terms:  # e.g. noisy top-k's CV².
    weight = getattr(config.router_options, weight_field)
    if weight > 0:
      aux['aux_loss'] += weight * aux[loss]
  # A loss the router weighted itself, by its state (ReMoE's adaptive λ).
  if 'router_loss' in aux:
    aux['aux_loss'] += aux['router_loss']
  if return_routing:
    discrete = isinstance(plan, RoutingPlan)
    if routed is None and discrete:  # A router that says nothing: all real.
      routed = plan.expert_index < plan.num_experts
    aux['routing'] = {'plan': plan if discrete else None, 'logits': sg_logits,
                      'routed': routed}
  return out.reshape(x.shape).astype(x.dtype), aux
