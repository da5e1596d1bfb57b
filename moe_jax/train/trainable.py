"""What a run trains: the whole model, or LoRA adapters beside a frozen base.

The trainer and the evaluator never ask which: `for_config` is the one
place that does, and both kinds answer the same questions:

  trained(params)         what the optimizer trains, inside the jitted init
  model_params(state)     the parameters the model summary counts
  summary(state)          a line for the log, or None
  resumed(meta)           checks a restored checkpoint's meta
  start(state)            (the state a fresh run starts from, a log line)
  step_fn(graphdef, tx, shardings, batch_sh, mesh[, keep_on_overflow])
                          (state, batch) -> (state, metrics), jitted
  eval_shardings(shardings), eval_view(state)
                          the state as evaluation sees it, and its shardings
  meta()                  what the checkpoint's meta adds
"""

from __future__ import annotations

import functools

import jax
from flax import nnx

from moe_jax.parallel import placement, rules
from moe_jax.train import ep_retry, init_from, setup
from moe_jax.train import step as step_lib
from moe_jax.train.lora import run as lora_run


def check_config(config) -> None:
  """One-line errors for the settings of what trains (the lora section)."""
  lora_run.check_config(config)


def for_config(config, mcfg, mesh, *, read_init_from: bool):
  """The run's FullModel, or its LoraRun when lora.rank > 0.

  read_init_from: whether a full run reads train.init_from now (a fresh
    run, before anything is written; a resumed one restores its own
    parameters). A LoRA run always reads it: it is the frozen base.
  """
  if lora_run.enabled(config):
    return lora_run.LoraRun(config, mcfg, mesh)
  return FullModel(config, mcfg, read_init_from)


class FullModel:
  """Trains every parameter; train.init_from, if set, gives their start."""

  def __init__(self, config, mcfg, read_init_from: bool):
    self._config, self._mcfg = config, mcfg
    self._source = (init_from.from_config(config, self._model_fn())
                    if read_init_from else None)

  def _model_fn(self):
    return setup.new_model(self._mcfg, self._config)

  def trained(self, params: nnx.State) -> nnx.State:
    return params

  def model_params(self, state) -> nnx.State:
    return state.params

  def summary(self, state) -> None:
    del state

  def resumed(self, meta: dict | None) -> None:
    del meta

  def start(self, state):
    """(state, message): a step-0 state filled from train.init_from."""
    if not self._config.train.init_from or int(state.step) != 0:
      return state, None
    source = self._source
    if source is None:  # Its checkpoints were there but none restored.
      source = init_from.from_config(self._config, self._model_fn())
    state = state.replace(params=init_from.apply(source, state.params))
    n = source.num_tiled_layers
    upcycled = (f', {n} dense FFN{"s" * (n > 1)} upcycled into '
                f'{self._mcfg.moe.num_experts} experts each' if n else '')
    return state, (f'initialised from step {source.step} of '
                   f'{source.workdir}{upcycled}')

  def step_fn(self, graphdef, tx, shardings, batch_sh, mesh,
              keep_on_overflow: bool = False):
    """(state, batch) -> (state, metrics): the jitted train step.

    keep_on_overflow: return the input state when a bounded expert-parallel
    exchange overflowed (ep_retry.py reruns the step).
    """
    step = functools.partial(
        step_lib.train_step, graphdef=graphdef, tx=tx,
        grad_accum_steps=self._config.train.grad_accum_steps)
    step = ep_retry.keep_state_on_overflow(step) if keep_on_overflow else step
    return jax.jit(
        rules.traced_with(rules.for_config(self._config), step),
        in_shardings=(shardings, batch_sh),
        out_shardings=(shardings, placement.replicated(mesh)),
        donate_argnums=0)

  def eval_shardings(self, shardings):
    return shardings

  def eval_view(self, state):
    return state

  def meta(self) -> dict:
    return {}
