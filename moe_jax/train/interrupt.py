"""Stopping on SIGINT/SIGTERM without losing work.

Ctrl-C, and the SIGTERM that schedulers send before preempting a job, would
otherwise raise KeyboardInterrupt anywhere (even inside XLA's compiler) and
lose every step since the last checkpoint. Instead the first signal only sets
a flag; the training loop finishes its step, saves, and raises
TrainingInterrupted. A second signal exits at once: orbax writes each
checkpoint to a temporary folder and renames it when complete, so exiting
mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
  """Training stopped on a signal after saving; `exit_code` is 128 + signum."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.exit_code = 128 + signum


class StopRequest:
  """Context manager: `signum` becomes the first SIGINT/SIGTERM received.

  Handlers are only installed from the main thread (Python allows no other);
  elsewhere `signum` stays None and signals behave as usual.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def _handle(self, signum, frame) -> None:
    del frame
    if self.signum is not None:
      sys.stderr.write(f'\n{signal.Signals(signum).name} again: exiting now; '
                       'the last finished checkpoint is intact.\n')
      sys.stderr.flush()
      os._exit(128 + signum)  # pylint: disable=protected-access
    self.signum = signum

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ''

  def __enter__(self) -> 'StopRequest':
    if threading.current_thread() is threading.main_thread():
      for s in SIGNALS:
        self._previous[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
