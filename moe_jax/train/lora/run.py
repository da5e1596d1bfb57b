"""LoRA runs in the trainer: the frozen base, its reference, evaluation.

A LoRA run (`lora.rank > 0`) adapts the model of `train.init_from`. Its
TrainState's params are the adapters alone, so the optimizer never sees a
frozen weight and its checkpoints hold only the adapters (and their AdamW
state); the checkpoint's meta names the base run and step
(`meta['lora_base']`). `python -m moe_jax.train.lora_merge` folds the
adapters into the base as an ordinary checkpoint.
"""

from __future__ import annotations

import functools
import math
import pathlib

import jax
from flax import nnx

from moe_jax.errors import UserInputError
from moe_jax.models.transformer import TransformerLM
from moe_jax.parallel import placement, rules
from moe_jax.train import init_from, lora


def enabled(config) -> bool:
  return config.lora.rank != 0


def check_config(config) -> None:
  """One-line errors for the lora section (targets are checked at init)."""
  rank, alpha = config.lora.rank, config.lora.alpha
  if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
    raise UserInputError(f'lora.rank={rank!r} must be an int >= 0 (0: off); '
                         'set --config.lora.rank')
  if not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or (
      alpha <= 0):
    raise UserInputError(f'lora.alpha={alpha!r} must be finite and > 0; set '
                         '--config.lora.alpha')
  if rank and not config.train.init_from:
    raise UserInputError(
        'lora.rank > 0 adapts a trained model; set '
        '--config.train.init_from=<its workdir>')


def scale(config) -> float:
  """α / r, the factor on A · B."""
  return config.lora.alpha / config.lora.rank


def init_adapters(config, params: nnx.State) -> dict:
  """The adapters of `params` (called inside the jitted init)."""
  shapes = {k: v.shape for k, v in init_from.flatten(params).items()}
  key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  return lora.init_adapters(key, shapes, tuple(config.lora.targets),
                            config.lora.rank)


def frozen_base(mcfg, config, mesh, source: init_from.InitSource):
  """(the base parameters placed on `mesh`, their shardings)."""
  init_fn = lambda: nnx.state(TransformerLM(mcfg, rngs=nnx.Rngs(config.seed)),
                              nnx.Param)
  if 'fresh' in source.plan.values():  # Some arrays keep a random init.
    params, shardings = placement.init_sharded(init_fn, mesh)
    return init_from.apply(source, params), shardings
  # Every array comes from the base run: place those directly, with no
  # random model built only to be overwritten.
  with jax.set_mesh(mesh):
    abstract = jax.eval_shape(init_fn)
  shardings = rules.tree_shardings(abstract, mesh)
  return init_from.apply(
      source, placement.abstract_with_shardings(abstract, shardings)), shardings


def base_reference(source: init_from.InitSource) -> dict:
  """What meta['lora_base'] records: the base run's workdir and step."""
  return {'workdir': str(pathlib.Path(source.workdir).absolute()),
          'step': source.step}


def check_base(meta: dict | None, source: init_from.InitSource) -> None:
  """A resumed LoRA run must find the base its adapters were trained on."""
  saved = (meta or {}).get('lora_base')
  if saved and saved['step'] != source.step:
    raise UserInputError(
        f"these adapters were trained on step {saved['step']} of "
        f"{saved['workdir']}, whose latest checkpoint is now step "
        f'{source.step}; resume with that base or start a new --workdir')


def merged_view(frozen, frozen_shardings, config):
  """state -> the same state with the merged parameters (for evaluation)."""
  fold = jax.jit(functools.partial(lora.merge, scale=scale(config)),
                 out_shardings=frozen_shardings)
  return lambda state: state.replace(params=fold(frozen, state.params))
