"""A LoRA run: adapters trained beside the frozen base of train.init_from.

A LoRA run (`lora.rank > 0`) adapts the model of `train.init_from`. Its
TrainState's params are the adapters alone, so the optimizer never sees a
frozen weight and its checkpoints hold only the adapters (and their AdamW
state); the checkpoint's meta names the base run and step
(`meta['lora_base']`). `python -m moe_jax.train.lora_merge` folds the
adapters into the base as an ordinary checkpoint.

LoraRun answers what the trainer and the evaluator ask of a run
(train/trainable.py): what it trains, its step function, its parameters as
evaluation sees them, and its checkpoint metadata.
"""

from __future__ import annotations

import functools
import math
import pathlib

import jax
from flax import nnx

from moe_jax.errors import UserInputError, check_non_negative, require
from moe_jax.parallel import placement, rules
from moe_jax.train import ep_retry, init_from, setup
from moe_jax.train import step as step_lib
from moe_jax.train.lora import adapters as lora


def enabled(config) -> bool:
  return config.lora.rank != 0


def check_config(config) -> None:
  """One-line errors for the lora section (targets are checked at init)."""
  rank, alpha = config.lora.rank, config.lora.alpha
  check_non_negative('lora.rank', rank,
                     fix='0 turns LoRA off; set --config.lora.rank')
  require(isinstance(alpha, (int, float)) and math.isfinite(alpha)
          and alpha > 0, 'lora.alpha', alpha, 'be finite and > 0',
          'set --config.lora.alpha')
  if rank and not config.train.init_from:
    raise UserInputError(
        'lora.rank > 0 adapts a trained model; set '
        '--config.train.init_from=<its workdir>')


def scale(config) -> float:
  """α / r, the factor on A · B."""
  return config.lora.alpha / config.lora.rank


def base_reference(source: init_from.InitSource) -> dict:
  """What meta['lora_base'] records: the base run's workdir and step."""
  return {'workdir': str(pathlib.Path(source.workdir).absolute()),
          'step': source.step}


class LoraRun:
  """Trains LoRA adapters; the base parameters stay frozen on the mesh.

  Reading the base (train.init_from) happens here, before anything is
  written, so a bad base costs nothing; placing it waits for its first use.
  """

  def __init__(self, config, mcfg, mesh):
    self._config, self._mcfg, self._mesh = config, mcfg, mesh
    self.scale = scale(config)
    self.source = init_from.from_config(config, setup.new_model(mcfg, config))

  def trained(self, params: nnx.State) -> dict:
    """The adapters of `params` (called inside the jitted init)."""
    shapes = {k: v.shape for k, v in init_from.flatten(params).items()}
    key = jax.random.fold_in(jax.random.PRNGKey(self._config.seed), 1)
    return lora.init_adapters(key, shapes, tuple(self._config.lora.targets),
                              self._config.lora.rank)

  @functools.cached_property
  def _frozen(self):
    """(the base parameters placed on the mesh, their shardings)."""
    model_fn = setup.new_model(self._mcfg, self._config)
    init_fn = lambda: nnx.state(model_fn(), nnx.Param)
    if 'fresh' in self.source.plan.values():  # Some arrays keep a random init.
      params, shardings = placement.init_sharded(
          init_fn, self._mesh, rules.for_config(self._config))
      return init_from.apply(self.source, params), shardings
    # Every array comes from the base run: place those directly, with no
    # random model built only to be overwritten.
    with jax.set_mesh(self._mesh):
      abstract = jax.eval_shape(init_fn)
    shardings = rules.tree_shardings(abstract, self._mesh,
                                     rules.for_config(self._config))
    return init_from.apply(
        self.source,
        placement.abstract_with_shardings(abstract, shardings)), shardings

  def model_params(self, state) -> nnx.State:
    """The parameters the model summary counts: the base's."""
    del state
    return self._frozen[0]

  def summary(self, state) -> str:
    c = self._config.lora
    return (f'LoRA r={c.rank} on {", ".join(c.targets)}: '
            f'{sum(x.size for x in jax.tree.leaves(state.params)):,} '
            'trainable parameters, the rest frozen')

  def resumed(self, meta: dict | None) -> None:
    """A resumed LoRA run must find the base its adapters were trained on."""
    saved = (meta or {}).get('lora_base')
    if saved and saved['step'] != self.source.step:
      raise UserInputError(
          f"these adapters were trained on step {saved['step']} of "
          f"{saved['workdir']}, whose latest checkpoint is now step "
          f'{self.source.step}; resume with that base or start a new '
          '--workdir')

  def start(self, state):
    """(state, message): the adapters start as they were initialised."""
    return state, None

  def step_fn(self, graphdef, tx, shardings, batch_sh, mesh,
              keep_on_overflow: bool = False):
    """(state, batch) -> (state, metrics): the jitted step on the adapters
    (keep_on_overflow: as trainable.FullModel.step_fn)."""
    frozen, frozen_sh = self._frozen
    step = functools.partial(
        step_lib.train_step, graphdef=graphdef, tx=tx, lora_scale=self.scale,
        grad_accum_steps=self._config.train.grad_accum_steps)
    step = ep_retry.keep_state_on_overflow(step) if keep_on_overflow else step
    fn = jax.jit(
        rules.traced_with(rules.for_config(self._config), step),
        in_shardings=(shardings, batch_sh, frozen_sh),
        out_shardings=(shardings, placement.replicated(mesh)),
        donate_argnums=0)
    return lambda state, batch: fn(state, batch, frozen)

  def eval_shardings(self, shardings):
    """The shardings of eval_view's states."""
    return shardings.replace(params=self._frozen[1])

  @functools.cached_property
  def _fold(self):
    return jax.jit(functools.partial(lora.merge, scale=self.scale),
                   out_shardings=self._frozen[1])

  def eval_view(self, state):
    """`state` with the merged parameters W + (α/r)·A·B (for evaluation)."""
    return state.replace(params=self._fold(self._frozen[0], state.params))

  def meta(self) -> dict:
    """What the checkpoint's meta adds: the base run and step."""
    return {'lora_base': base_reference(self.source)}
