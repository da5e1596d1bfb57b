"""Evaluation: the jitted eval function, its metrics over batches, and a
saved checkpoint evaluated under other eval settings, without retraining.

The capacity-factor counterfactual (ST-MoE Table 8): train once, then ask
what the same parameters score at eval capacity factor 1.0, 2.0, 4.0 or with
the dropless dispatcher, or on other data. Only eval-time fields may differ
from the run's config; anything that changes the parameters is refused. A
LoRA run's adapters are folded into its base in memory, as the trainer does.
The command line is `python -m moe_jax.evaluate`.
"""

from __future__ import annotations

import functools
import math
import pathlib
from typing import Any, NamedTuple

import jax
import ml_collections
import numpy as np

from moe_jax.config.default_config import router_eval_only_fields
from moe_jax.errors import UserInputError
from moe_jax.parallel import placement
from moe_jax.parallel import rules as rules_lib
from moe_jax.train import setup, trainable
from moe_jax.train.checkpoint import Checkpointer, config_differences
from moe_jax.train.step import EVAL_ROUTING_METRICS, eval_step

# Fields that change how a checkpoint is evaluated (or on what) but not
# what it holds.
EVAL_ONLY_FIELDS = ('moe.eval_capacity_factor', 'moe.dispatcher',
                    *router_eval_only_fields(), 'moe.min_capacity',
                    'train.eval_batches', 'train.final_eval_batches',
                    'data.kind', 'data.path',
                    # Which tokens share a capacity: no parameter depends on
                    # it (e.g. batch-wide groups at evaluation, as capacity
                    # cells per device; experiments/eval_sorting.py).
                    'moe.group_size')


def make_eval_fn(graphdef, shardings, batch_sh, mesh,
                 rules=rules_lib.DEFAULT_RULES):
  """jit(eval_step) as a function of (state, batch).

  The state's router states (selection biases) are an input too. rules: the
  rule set `shardings` come from (rules.for_config).
  """
  step = functools.partial(eval_step, graphdef=graphdef)
  fn = jax.jit(rules_lib.traced_with(rules, step),
               in_shardings=(shardings.params, batch_sh,
                             shardings.router_states()),
               out_shardings=placement.replicated(mesh))
  return lambda state, batch: fn(state.params, batch, state.router_states())


def evaluate(eval_fn, state, batches, unit: str = 'byte') -> dict[str, float]:
  """Mean loss and routing metrics over the validation batches (on devices).

  eval_fn: (state, batch) -> eval_step's sums (see make_eval_fn).
  unit: what one position is, 'byte' or 'token': the loss in bits is
  reported as 'eval/bits_per_<unit>'.

  'eval/max_violation' etc. are means over batches of the per-batch value
  (itself a mean over MoE layers), so MaxVio is that of a batch's routing.
  """
  sums = [jax.device_get(eval_fn(state, b)) for b in batches]
  ce = sum(float(s['ce_sum']) for s in sums) / sum(float(s['count']) for s in sums)
  out = {'eval/loss': ce, f'eval/bits_per_{unit}': ce / math.log(2)}
  for name in EVAL_ROUTING_METRICS:
    out[f'eval/{name}'] = float(np.mean([s[name] for s in sums]))
  return out


class Restored(NamedTuple):
  """A restored checkpoint and what evaluating it needs."""
  config: ml_collections.ConfigDict
  graphdef: Any
  state: Any  # TrainState, or RoutedTrainState for routers with a bias.
  shardings: Any  # Of `state`.
  val_batches: list  # The batches of each evaluation during training.
  mesh: Any
  # What one position of the data is: 'byte' or 'token' (None: not loaded).
  unit: str | None = 'byte'
  final_batches: list | None = None  # Those of the final evaluation.

  @property
  def params(self):
    return self.state.params


def restore_checkpoint(config: ml_collections.ConfigDict, workdir: str, *,
                       load_data: bool = True, **eval_overrides):
  """The latest checkpoint of `workdir`, ready to evaluate at other settings.

  Args:
    config: the config the checkpoint was trained with.
    workdir: the run's workdir.
    load_data: False skips reading the run's data (for tools that need only
      the parameters, e.g. sampling, and still work once the data is gone):
      no validation batches, and unit None.
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
    config.update_from_flattened_dict({field: value})  # Any depth.
  mcfg = setup.model_config(config)
  data = setup.load_data(config) if load_data else None
  mesh = setup.make_mesh(config, mcfg)
  ckpt = Checkpointer(pathlib.Path(workdir), config.train.keep_checkpoints)
  try:
    if ckpt.latest_step() is None:
      raise UserInputError(f'no checkpoint in {ckpt.directory}; train first.')
    # A LoRA run's checkpoint holds its adapters: it restores onto them and
    # is evaluated folded into the frozen base in memory, as the trainer
    # does (`python -m moe_jax.train.lora_merge` writes a merged copy).
    trains = trainable.for_config(config, mcfg, mesh, read_init_from=False)
    graphdef, state, shardings, _ = setup.init_state(mcfg, config, mesh,
                                                     trains.trained)
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
  trains.resumed(meta)
  with jax.set_mesh(mesh):
    state = trains.eval_view(state)
  if data is None:
    return Restored(config, graphdef, state, trains.eval_shardings(shardings),
                    [], mesh, None)
  return Restored(config, graphdef, state, trains.eval_shardings(shardings),
                  data.val_batches, mesh, data.corpus.unit.rstrip('s'),
                  data.final_batches)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                        batches: list | None = None,
                        **eval_overrides) -> dict[str, float]:
  """Eval metrics of the latest checkpoint in `workdir` (as the trainer's).

  Args:
    config: the config the checkpoint was trained with.
    workdir: the run's workdir.
    batches: host batch dicts to score, all of one shape; default the
      batches of the run's own final evaluation, so the numbers compare.
    **eval_overrides: EVAL_ONLY_FIELDS with '.' written as '__', e.g.
      moe__eval_capacity_factor=4.0 or moe__dispatcher='dropless'.
  """
  r = restore_checkpoint(config, workdir, **eval_overrides)
  batches = r.final_batches if batches is None else batches
  batch_sh = placement.batch_shardings(r.mesh, batches[0])
  eval_fn = make_eval_fn(r.graphdef, r.shardings, batch_sh, r.mesh,
                         rules_lib.for_config(r.config))
  batches = [placement.shard_batch(b, batch_sh) for b in batches]
  with jax.set_mesh(r.mesh):
    return evaluate(eval_fn, r.state, batches, r.unit)
