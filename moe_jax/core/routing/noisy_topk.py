"""Noisy top-k gating (Shazeer et al. 2017, "Outrageously Large Neural
Networks", Sec. 2.1 and Appendix A).

H = x·W_g + N(0, 1)·softplus(x·W_noise); G = softmax(KeepTopK(H, k)). The
noise scale is learned per token and expert through W_noise; noise is drawn
only when a key is given (training), so evaluation is deterministic.

Two balance losses (Appendix A), both CV² = Var/Mean² over experts:
  importance: of Σ_tokens G[:, e];
  load: of a smooth load estimate, Σ_tokens P(x, e), where P(x, e) =
    Φ((x·W_g)_e − kth_excluding(H, k, e)) / softplus((x·W_noise)_e)) is the
    probability that e stays in the top k if only its own noise is redrawn.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
from jax.scipy.stats import norm

from moe_jax.core import losses
from moe_jax.core.plan import RoutingPlan
from moe_jax.core.routing import registry
from moe_jax.core.routing.common import build_plan, choose, top_k_experts
from moe_jax.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class Options:
  """moe.router_options.noisy_topk.

  Attributes:
    importance_weight: weight of the importance CV² loss (Shazeer et al.
      used 0.1); 0: off.
    load_cv_weight: weight of the smooth load CV² loss; 0: off.
  """

  importance_weight: float = 0.0
  load_cv_weight: float = 0.0

  def __post_init__(self):
    for name in ('importance_weight', 'load_cv_weight'):
      value = getattr(self, name)
      if (not isinstance(value, (int, float)) or isinstance(value, bool) or
          not value >= 0):
        raise UserInputError(
            f'router_options.noisy_topk.{name}={value!r} must be >= 0.')


def cv_squared(x: jax.Array) -> jax.Array:
  """Squared coefficient of variation Var(x)/Mean(x)² over the last axis."""
  x = x.astype(jnp.float32)
  return jnp.var(x, axis=-1) / (jnp.square(jnp.mean(x, axis=-1)) + 1e-10)


def smooth_load(clean: jax.Array, noisy: jax.Array, noise_std: jax.Array,
                k: int) -> jax.Array:
  """[E]: Σ_tokens P(x, e), the expected number of tokens keeping e in their
  top k under e's own noise (Shazeer Eq. 8-10).

  Args:
    clean: float [..., E] x·W_g; noisy: float [..., E] H; noise_std: float
      [..., E] softplus(x·W_noise); k < E.
  """
  top, _ = top_k_experts(noisy, k + 1)  # [..., k+1] descending.
  in_top = noisy >= top[..., k - 1:k]  # e is among the k largest of H.
  # The k-th largest of the *other* experts: the (k+1)-th if e is in the
  # top k (removing e moves it up), the k-th otherwise.
  threshold = jnp.where(in_top, top[..., k:k + 1], top[..., k - 1:k])
  prob = norm.cdf((clean - threshold) / noise_std)
  return jnp.sum(prob.reshape(-1, prob.shape[-1]), axis=0)


def noisy_top_k(logits: jax.Array, *, capacity: int | None, k: int,
                noise_logits: jax.Array, key: jax.Array | None = None,
                balance_fn: Callable = losses.load_balance_loss,
                replay: jax.Array | None = None
                ) -> tuple[RoutingPlan, dict]:
  """Noisy top-k routing.

  Args:
    logits: float [G, S, E] clean logits x·W_g.
    capacity: C, or None for dropless.
    k: K < E.
    noise_logits: float [G, S, E] x·W_noise.
    key: draws the noise; None (eval) routes on the clean logits.
    balance_fn: the Switch balance loss (also reported; weight it 0 to use
      only the CV² losses, as the paper does).

  Returns:
    (plan, aux); aux adds 'importance_loss' and 'load_loss' (unweighted CV²).
  """
  logits = logits.astype(jnp.float32)
  noise_std = jax.nn.softplus(noise_logits.astype(jnp.float32))
  noisy = logits
  if key is not None:
    noisy = logits + jax.random.normal(key, logits.shape) * noise_std
  top_h, expert_index = choose(noisy, k, replay)
  gates = jax.nn.softmax(top_h, axis=-1)  # softmax(KeepTopK(H, k))
  e = logits.shape[-1]
  routed = jnp.ones(gates.shape, bool)
  plan, aux = build_plan(logits, jax.nn.softmax(logits, axis=-1),
                         expert_index, gates, routed, capacity, balance_fn)
  importance = jnp.sum(jax.nn.one_hot(expert_index, e) * gates[..., None],
                       axis=(0, 1, 2))
  aux['importance_loss'] = cv_squared(importance)
  aux['load_loss'] = cv_squared(smooth_load(logits, noisy, noise_std, k))
  return plan, aux


def _route(inputs, config, *, train, capacity, key, balance_fn):
  del train
  noise_logits = inputs.router_in @ inputs.params['noise_kernel'].astype(
      jnp.float32)
  return noisy_top_k(inputs.logits, capacity=capacity, k=config.top_k,
                     noise_logits=noise_logits, key=key, balance_fn=balance_fn,
                     replay=inputs.replay)


def _check(config) -> None:
  if config.top_k >= config.num_experts:
    raise UserInputError(
        f"router='noisy_topk' needs top_k < num_experts (the load loss "
        f'compares each expert with the k-th best other); top_k='
        f'{config.top_k}, num_experts={config.num_experts}.')


# Shazeer et al. start W_noise at 0: noise std softplus(0) ≈ 0.69.
NOISE_KERNEL = registry.ExtraParam(
    'noise_kernel', lambda config, d: (d, config.num_experts),
    jax.nn.initializers.zeros, ('embed', None))


def _batch_pooled(config) -> str | None:
  o = config.router_options
  if o.importance_weight > 0 or o.load_cv_weight > 0:
    return ('the CV² losses of router_options.noisy_topk (importance_weight, '
            'load_cv_weight) pool the whole batch; set them to 0')
  return None


SPEC = registry.register(registry.RouterSpec(
    name='noisy_topk', route=_route, options=Options, check=_check,
    replayable=True,
    extra_params=lambda config: (NOISE_KERNEL,),
    aux_terms=(('importance_weight', 'importance_loss'),
               ('load_cv_weight', 'load_loss')),
    batch_pooled=_batch_pooled,
    legacy_fields=(('importance_weight', 'importance_weight'),
                   ('load_cv_weight', 'load_cv_weight'))))
