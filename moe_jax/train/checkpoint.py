"""Checkpoints with orbax: periodic, atomic, resumable, config-checked.

Orbax writes each step to a temporary directory and renames it on success,
so a run killed mid-save leaves the previous checkpoints intact and the torn
one invisible. The experiment config is saved next to the state; a workdir
whose checkpoint came from an incompatible config is refused before anything
is written.
"""

from __future__ import annotations

import pathlib
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from moe_jax.data import fingerprint
from moe_jax.errors import UserInputError
from moe_jax.train import quiet_restore
from moe_jax.train.saved_config import config_differences


def saved_steps(workdir: str | pathlib.Path) -> list[int]:
  """The steps of `workdir`'s finished checkpoints, in order; reads, creates
  nothing. (Orbax renames a save's folder to its step when it is done.)"""
  directory = pathlib.Path(workdir) / 'checkpoints'
  if not directory.is_dir():
    return []
  return sorted(int(p.name) for p in directory.iterdir()
                if p.is_dir() and p.name.isdigit())


def has_checkpoint(workdir: str | pathlib.Path) -> bool:
  """Whether `workdir` holds a checkpoint step; reads, creates nothing."""
  return bool(saved_steps(workdir))


def read(workdir: str | pathlib.Path, step: int | None = None,
         flag: str = '--config.train.init_from'):
  """(step, raw state tree as host arrays, meta) of a run's checkpoint.

  Raw: the saved tree as dicts, whatever model or state class saved it,
  on this process's first device (a checkpoint saved across a mesh of other
  devices does not restore without a target).

  Args:
    workdir: the run's workdir.
    step: which checkpoint; None: the latest.
    flag: the setting that named `workdir`, for messages.
  """
  fix = f'set {flag} to the --workdir of a finished run'
  path = pathlib.Path(workdir).expanduser()
  if not (path / 'checkpoints').is_dir():
    raise UserInputError(f"'{workdir}' has no checkpoints folder; {fix}")
  ckpt = Checkpointer(path, keep=None)  # Reads only: deletes nothing.
  try:
    step, state, meta = ckpt.read(step, f"'{workdir}'", fix)
  finally:
    ckpt.close()
  if not isinstance(state, dict) or 'params' not in state:
    raise UserInputError(f'the checkpoint in {ckpt.directory} holds no '
                         f'params; {fix}')
  return step, state, meta


class Checkpointer:
  """A CheckpointManager over `workdir/checkpoints` holding (state, meta)."""

  def __init__(self, workdir: str | pathlib.Path, keep: int | None):
    self.directory = pathlib.Path(workdir).absolute() / 'checkpoints'
    # create=False: the folder appears with the first save (orbax makes its
    # parents), so a run refused after this point, or an evaluation of a
    # mistyped workdir, leaves no empty checkpoints/ behind.
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=False),
        item_names=('state', 'meta'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def latest_meta(self):
    """(step, meta) of the newest checkpoint whose meta reads, or None.

    The meta holds the run's config ('config') and data fingerprint
    ('data'), so a tool can rebuild the run's config without restoring
    the state.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        with quiet_restore.quiet_async_errors():
          return step, self._manager.restore(
              step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
      except Exception:  # pylint: disable=broad-except
        continue  # Damaged; restore() moves it aside and says so.
    return None

  def check_compatible(self, config_dict: dict[str, Any],
                       data: dict[str, Any] | None = None) -> str | None:
    """Raises UserInputError if the checkpoint's config or data differs, or
    if it is already past train.num_steps (resuming it would train nothing
    and report the later parameters as if they were the final ones).

    Args:
      config_dict: the run's config.
      data: the run's data fingerprint (moe_jax/data/fingerprint.py); None
        skips the data check.

    Returns:
      A one-line note when the checkpoint predates data fingerprints (its
      data cannot be checked), else None.
    """
    found = self.latest_meta()
    if found is None:
      return None
    step, meta = found
    diffs = config_differences(meta['config'], config_dict)
    if diffs:
      raise UserInputError(
          f'workdir {self.directory.parent} holds a checkpoint (step {step}) '
          f'from an incompatible config ({"; ".join(diffs)}); use a new '
          '--workdir or the original config.')
    num_steps = config_dict['train']['num_steps']
    if step > num_steps:
      raise UserInputError(
          f'workdir {self.directory.parent} holds a checkpoint at step {step}, '
          f'past train.num_steps={num_steps}; to train on, rerun with '
          f'--config.train.num_steps > {step} (the learning-rate schedule '
          'follows num_steps), or use a new --workdir.')
    if data is None:
      return None
    if meta.get('data') is None:
      return (f'note: the checkpoint at step {step} predates data '
              'fingerprints, so its data cannot be checked; the next save '
              'records it.')
    changed = fingerprint.data_differences(meta['data'], data)
    if changed:
      raise UserInputError(
          f'workdir {self.directory.parent} holds a checkpoint (step {step}) '
          f'trained on other data ({"; ".join(changed)}); resume with the '
          'original data, or start afresh with a new --workdir.')
    return None

  def restore(self, abstract_state):
    """Restores the newest checkpoint that restores, onto the structure (and
    shardings) of `abstract_state`.

    A checkpoint that fails to restore (a truncated or missing file) is
    renamed to `<step>.damaged-<n>`, kept for inspection, and named in one
    line on stderr; the next older one is tried. Orbax ignores the renamed
    folder, so it blocks neither this restore nor later saves.

    Returns:
      (state, meta), or (None, None) when no checkpoint restores.
    """
    for step in sorted(self._manager.all_steps(), reverse=True):
      try:
        with quiet_restore.quiet_async_errors():
          restored = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta
      except Exception as e:  # pylint: disable=broad-except
        # Any failure means this step cannot be resumed; the reason goes in
        # the message and the files stay on disk.
        aside = self._move_aside(step)
        print(f'warning: skipped checkpoint {step}, which does not restore '
              f'({_reason(e)}); moved it to {aside}', file=sys.stderr,
              flush=True)
    return None, None

  def _move_aside(self, step: int) -> pathlib.Path:
    source = self.directory / str(step)
    n = 1
    while (self.directory / f'{step}.damaged-{n}').exists():
      n += 1
    target = self.directory / f'{step}.damaged-{n}'
    # Each process sees the same folder; one rename is enough.
    if jax.process_index() == 0:
      source.rename(target)
    self._manager.reload()
    return target

  def read(self, step: int | None, name: str, fix: str):
    """(step, raw state tree as host arrays, meta); see `read`.

    name, fix: the workdir as the user gave it, and what to do when its
    checkpoint cannot be read, for messages.
    """
    steps = self._manager.all_steps()
    if step is None:
      step = self._manager.latest_step()
      if step is None:
        raise UserInputError(f'{name} holds no checkpoint; {fix}')
    elif step not in steps:
      raise UserInputError(
          f'{name} no longer holds the checkpoint of step {step} (it '
          f'has {sorted(steps)}); {fix}')
    try:
      saved = ocp.StandardCheckpointHandler().metadata(
          self.directory / str(step) / 'state').tree
      here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=here),
          saved)
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target),
          meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      # Any failure (a torn file, another format) leaves nothing to read.
      raise UserInputError(
          f'the checkpoint at step {step} in {self.directory} does not '
          f'restore ({_reason(e)}); {fix}') from e
    state = jax.tree.map(lambda x: np.asarray(jax.device_get(x)),
                         restored.state)
    return step, state, restored.meta

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    if step in self._manager.all_steps():
      return  # Already saved (e.g. the final step was also a periodic one).
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _reason(e: Exception) -> str:
  """One line naming why a restore failed. TensorStore appends its whole
  spec; the sentence before it says which file failed."""
  reason = str(e).split(' See full TensorStore')[0]
  return ' '.join(f'{type(e).__name__}: {reason}'.split())[:200]
