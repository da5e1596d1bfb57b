"""Evaluate a saved checkpoint under other eval settings, without retraining.

The capacity-factor counterfactual (ST-MoE Table 8): train once, then ask
what the same parameters score at eval capacity factor 1.0, 2.0, 4.0 or with
the dropless dispatcher, or on other data. Only eval-time fields may differ
from the run's config; anything that changes the parameters is refused. A
LoRA run's adapters are folded into its base in memory, as the trainer does.
The command line is `python -m moe_jax.evaluate`.
"""

from __future__ import annotations

import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
from flax import nnx

from moe_jax.config.default_config import router_eval_only_fields
from moe_jax.errors import UserInputError
from moe_jax.models.transformer import TransformerLM
from moe_jax.parallel import placement
from moe_jax.train import init_from, lora_run, trainer
from moe_jax.train.checkpoint import Checkpointer, config_differences

# Fields that change how a checkpoint is evaluated (or on what) but not
# what it holds.
EVAL_ONLY_FIELDS = ('moe.eval_capacity_factor', 'moe.dispatcher',
                    *router_eval_only_fields(), 'moe.min_capacity',
                    'train.eval_batches', 'train.final_eval_batches',
                    'data.kind', 'data.path')


class Restored(NamedTuple):
  """A restored checkpoint and what evaluating it needs."""
  config: ml_collections.ConfigDict
  graphdef: Any
  state: Any  # TrainState, or RoutedTrainState for routers with a bias.
  shardings: Any  # Of `state`.
  val_batches: list  # The batches of each evaluation during training.
  mesh: Any
  unit: str = 'byte'  # What one position of the data is: 'byte' or 'token'.
  final_batches: list | None = None  # Those of the final evaluation.

  @property
  def params(self):
    return self.state.params


def restore_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                       **eval_overrides):
  """The latest checkpoint of `workdir`, ready to evaluate at other settings.

  Args:
    config: the config the checkpoint was trained with.
    workdir: the run's workdir.
    **eval_overrides: EVAL_ONLY_FIELDS with '.' written as '__', e.g.
      moe__eval_capacity_factor=4.0 or moe__dispatcher='dropless'.

  Returns:
    A Restored: the config with the overrides, the graphdef, the state
    placed on `mesh` and its shardings, the validation batches (host
    arrays) and the mesh.
  """
  config = ml_collections.ConfigDict(config.to_dict())
  for key, value in eval_overrides.items():
    field = key.replace('__', '.')
    if field not in EVAL_ONLY_FIELDS:
      raise UserInputError(
          f'{field} changes what a checkpoint holds; only {EVAL_ONLY_FIELDS} '
          'can differ at evaluation.')
    *path, name = field.split('.')  # Router options sit deeper.
    node = config
    for part in path:
      node = node[part]
    node[name] = value
  mcfg = trainer.model_config(config)
  data = trainer.load_data(config)
  mesh = trainer.make_mesh(config, mcfg)
  ckpt = Checkpointer(pathlib.Path(workdir), config.train.keep_checkpoints)
  try:
    if ckpt.latest_step() is None:
      raise UserInputError(f'no checkpoint in {ckpt.directory}; train first.')
    graphdef, state, shardings, _ = trainer.init_state(mcfg, config, mesh)
    state, meta = ckpt.restore(
        placement.abstract_with_shardings(state, shardings))
    if state is None:
      raise UserInputError(f'no checkpoint in {ckpt.directory} restores.')
  finally:
    ckpt.close()
  trained = ml_collections.ConfigDict(meta['config'])
  diffs = [d for d in config_differences(trained.to_dict(), config.to_dict())
           if d.split(':')[0] not in EVAL_ONLY_FIELDS]
  if diffs:
    raise UserInputError(f'the checkpoint in {workdir} was trained with '
                         f'another config ({"; ".join(diffs)}).')
  if lora_run.enabled(config):
    state, shardings = _merge_lora(config, mcfg, mesh, state, shardings, meta)
  return Restored(config, graphdef, state, shardings, data.val_batches, mesh,
                  data.corpus.unit.rstrip('s'), data.final_batches)


def _merge_lora(config, mcfg, mesh, state, shardings, meta):
  """A LoRA run's state with W + (α/r)·A·B as its params, on `mesh`.

  Its checkpoint holds the adapters alone; the trainer evaluates them
  folded into the frozen base, and so does this (no merged copy is
  written; `python -m moe_jax.train.lora_merge` writes one).
  """
  source = init_from.prepare(
      config.train.init_from, config.train.upcycle,
      lambda: TransformerLM(mcfg, rngs=nnx.Rngs(config.seed)))
  lora_run.check_base(meta, source)
  frozen, frozen_sh = lora_run.frozen_base(mcfg, config, mesh, source)
  with jax.set_mesh(mesh):
    state = lora_run.merged_view(frozen, frozen_sh, config)(state)
  return state, shardings.replace(params=frozen_sh)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        **eval_overrides) -> dict[str, float]:
  """Eval metrics of the latest checkpoint in `workdir` (as the trainer's).

  Args:
    config: the config the checkpoint was trained with.
    workdir: the run's workdir.
    **eval_overrides: EVAL_ONLY_FIELDS with '.' written as '__', e.g.
      moe__eval_capacity_factor=4.0 or moe__dispatcher='dropless'.
  """
  r = restore_checkpoint(config, workdir, **eval_overrides)
  batch_sh = placement.batch_shardings(r.mesh, r.final_batches[0])
  eval_fn = trainer.make_eval_fn(r.graphdef, r.shardings, batch_sh, r.mesh)
  # The batches of the run's own final evaluation, so the numbers compare.
  batches = [placement.shard_batch(b, batch_sh) for b in r.final_batches]
  with jax.set_mesh(r.mesh):
    return trainer.evaluate(eval_fn, r.state, batches, r.unit)
