"""Checkpoints with orbax: periodic, atomic, resumable, config-checked.

Orbax writes each step to a temporary directory and renames it on success,
so a run killed mid-save leaves the previous checkpoints intact and the torn
one invisible. The experiment config is saved next to the state; a workdir
whose checkpoint came from an incompatible config is refused before anything
is written.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import orbax.checkpoint as ocp

from moe_jax.errors import UserInputError

# Config sections that decide what a checkpoint means. The rest (learning
# rate, step counts, logging) may change between a run and its resumption.
FINGERPRINT_KEYS = ('seed', 'data', 'batch_size', 'seq_len', 'model', 'moe')


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for k, v in tree.items():
    flat.update(_flatten(v, f'{prefix}.{k}' if prefix else k))
  return flat


def config_fingerprint(config_dict: dict[str, Any]) -> dict[str, Any]:
  """The flat {'model.d_model': 128, ...} view of the checked sections."""
  plain = json.loads(json.dumps(config_dict, default=str))
  return {k: v for k, v in _flatten(plain).items()
          if k.split('.')[0] in FINGERPRINT_KEYS}


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  old, new = config_fingerprint(saved), config_fingerprint(current)
  return [f'{k}: {old.get(k, "<absent>")!r} -> {new.get(k, "<absent>")!r}'
          for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


class Checkpointer:
  """A CheckpointManager over `workdir/checkpoints` holding (state, meta)."""

  def __init__(self, workdir: str | pathlib.Path, keep: int):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def check_compatible(self, config_dict: dict[str, Any]) -> None:
    """Raises UserInputError if the latest checkpoint's config differs."""
    step = self.latest_step()
    if step is None:
      return
    meta = self._manager.restore(
        step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
    diffs = config_differences(meta['config'], config_dict)
    if diffs:
      raise UserInputError(
          f'workdir {self.directory.parent} holds a checkpoint (step {step}) '
          f'from an incompatible config ({"; ".join(diffs)}); use a new '
          '--workdir or the original config.')

  def restore(self, abstract_state):
    """Restores the latest checkpoint onto the structure (and shardings) of
    `abstract_state`. Returns (state, meta)."""
    step = self.latest_step()
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        meta=ocp.args.JsonRestore()))
    return restored.state, restored.meta

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    if step in self._manager.all_steps():
      return  # Already saved (e.g. the final step was also a periodic one).
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
