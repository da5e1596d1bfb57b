"""Checkpoints with orbax: periodic, atomic, resumable, config-checked.

Orbax writes each step to a temporary directory and renames it on success,
so a run killed mid-save leaves the previous checkpoints intact and the torn
one invisible. The experiment config is saved next to the state; a workdir
whose checkpoint came from an incompatible config is refused before anything
is written.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import pathlib
import sys
from typing import Any

import jax
import orbax.checkpoint as ocp

from moe_jax.config import renames
from moe_jax.data import fingerprint
from moe_jax.errors import UserInputError

# Config sections that decide what a checkpoint means. The rest (learning
# rate, step counts, logging) may change between a run and its resumption.
FINGERPRINT_KEYS = ('seed', 'data', 'batch_size', 'seq_len', 'model', 'moe',
                    'lora')


def _flatten(tree: Any, prefix: str = '') -> dict[str, Any]:
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for k, v in tree.items():
    flat.update(_flatten(v, f'{prefix}.{k}' if prefix else k))
  return flat


def config_fingerprint(config_dict: dict[str, Any]) -> dict[str, Any]:
  """The flat {'model.d_model': 128, ...} view of the checked sections,
  under today's names (a checkpoint's old names are translated)."""
  plain = json.loads(json.dumps(config_dict, default=str))
  return {k: v for k, v in renames.translate(_flatten(plain)).items()
          if k.split('.')[0] in FINGERPRINT_KEYS}


# Fields added after checkpoints existed whose absence means another value
# than today's default: before data.split, every run held out the tail.
MEANT_WHEN_ABSENT = {'data.split': 'tail'}


def saved_config(saved: dict[str, Any]):
  """A checkpoint's config as a ConfigDict with every field of today's.

  A field the checkpoint predates takes the value it meant then
  (MEANT_WHEN_ABSENT) or today's default, and a field since moved is read
  at its new place (config/renames.py), so that old runs evaluate, merge
  and trace as they trained.
  """
  from moe_jax.config import default_config  # pylint: disable=g-import-not-at-top
  config = default_config.get_default_config()
  with config.unlocked():
    config.update_from_flattened_dict(
        {**MEANT_WHEN_ABSENT, **renames.translate(_flatten(saved))})
  return config


def _added_at_default(key: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
  """A field added to the code after the checkpoint was saved, and left at
  what the run computed before (today's default, or MEANT_WHEN_ABSENT): not a
  difference."""
  if key in old or key not in new:
    return False
  if key in MEANT_WHEN_ABSENT:
    return new[key] == MEANT_WHEN_ABSENT[key]
  # Imported here: the default config is only needed for this rare case.
  from moe_jax.config import default_config  # pylint: disable=g-import-not-at-top
  defaults = config_fingerprint(default_config.get_default_config().to_dict())
  return key in defaults and defaults[key] == new[key]


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
  old, new = config_fingerprint(saved), config_fingerprint(current)
  return [f'{k}: {old.get(k, "<absent>")!r} -> {new.get(k, "<absent>")!r}'
          for k in sorted(set(old) | set(new))
          if old.get(k) != new.get(k) and not _added_at_default(k, old, new)]


def _is_closed_loop_echo(unraisable) -> bool:
  return (isinstance(unraisable.exc_value, RuntimeError) and
          str(unraisable.exc_value) == 'Event loop is closed')


def _drop_closed_loop_echoes(previous):
  """`previous` (an unraisable hook) made to drop 'Event loop is closed'.

  After a failed restore, TensorStore's reads still in flight finish on
  its own threads and try to wake orbax's event loop, which the failure
  already closed: each prints 'RuntimeError: Event loop is closed' with a
  traceback, possibly after the restore has returned. Those echoes carry no
  news (the failure is reported once); every other unraisable error still
  reaches `previous`. Wrapping twice returns the same wrapper.
  """
  if getattr(previous, 'drops_closed_loop_echoes', False):
    return previous

  def hook(unraisable):
    if not _is_closed_loop_echo(unraisable):
      previous(unraisable)

  hook.drops_closed_loop_echoes = True
  return hook


@contextlib.contextmanager
def _quiet_async_errors():
  """Silences the echoes of one failed restore.

  Orbax reads each array in its own asyncio task. When the files are
  damaged, every task fails, and asyncio logs each unretrieved failure
  (with a TensorStore spec, hundreds of lines in all) when the task is
  garbage-collected. The first error is reported by the caller; collecting
  the tasks here, with the logs off, drops the rest.
  """
  logger = logging.getLogger('asyncio')
  level, hook = logger.level, sys.unraisablehook
  logger.setLevel(logging.CRITICAL + 1)
  sys.unraisablehook = lambda unraisable: None
  try:
    yield
  except Exception:
    # Late echoes arrive after this block: restore a hook that drops them.
    hook = _drop_closed_loop_echoes(hook)
    raise
  finally:
    gc.collect()
    logger.setLevel(level)
    sys.unraisablehook = hook


def has_checkpoint(workdir: str | pathlib.Path) -> bool:
  """Whether `workdir` holds a checkpoint step; reads, creates nothing."""
  directory = pathlib.Path(workdir) / 'checkpoints'
  return directory.is_dir() and any(
      p.is_dir() and p.name.isdigit() for p in directory.iterdir())


class Checkpointer:
  """A CheckpointManager over `workdir/checkpoints` holding (state, meta)."""

  def __init__(self, workdir: str | pathlib.Path, keep: int):
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
        with _quiet_async_errors():
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
        with _quiet_async_errors():
          restored = self._manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state),
              meta=ocp.args.JsonRestore()))
        return restored.state, restored.meta
      except Exception as e:  # pylint: disable=broad-except
        # Any failure means this step cannot be resumed; the reason goes in
        # the message and the files stay on disk.
        aside = self._move_aside(step)
        # TensorStore appends its whole spec; the sentence before it says
        # which file failed.
        reason = str(e).split(' See full TensorStore')[0]
        reason = ' '.join(f'{type(e).__name__}: {reason}'.split())[:200]
        print(f'warning: skipped checkpoint {step}, which does not restore '
              f'({reason}); moved it to {aside}', file=sys.stderr, flush=True)
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

  def save(self, step: int, state, meta: dict[str, Any]) -> None:
    if step in self._manager.all_steps():
      return  # Already saved (e.g. the final step was also a periodic one).
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
