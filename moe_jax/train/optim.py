"""The optimizer: AdamW, linear warmup then cosine decay, global-norm clip."""

from __future__ import annotations

import jax
import optax


def learning_rate_schedule(optim, num_steps: int) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=optim.learning_rate,
      warmup_steps=optim.warmup_steps,
      decay_steps=max(num_steps, optim.warmup_steps + 1),
      end_value=optim.learning_rate * optim.final_lr_fraction)


def make_optimizer(optim, num_steps: int) -> optax.GradientTransformation:
  """AdamW over the schedule; weight decay only on matrices (ndim >= 2)."""
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(
      optax.clip_by_global_norm(optim.grad_clip),
      optax.adamw(learning_rate_schedule(optim, num_steps), b1=optim.b1,
                  b2=optim.b2, weight_decay=optim.weight_decay,
                  mask=decay_mask))
