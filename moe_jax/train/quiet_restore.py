"""Quiet failed restores: one line of error, not hundreds of echoes.

A damaged checkpoint makes orbax fail in every one of its asyncio tasks and
TensorStore threads; checkpoint.py reports the first failure itself and
restores inside `quiet_async_errors` so the echoes stay silent.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import sys


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
def quiet_async_errors():
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
