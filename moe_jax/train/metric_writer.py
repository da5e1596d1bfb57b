"""Metric sinks for the training loop: JSON lines, TensorBoard, progress."""

import json
import math
import os
import pathlib
import sys
import time
from typing import Any, Callable, TextIO

import numpy as np
import rich.console
import rich.progress
import tensorboardX

from moe_jax.files import atomic_write


def _to_json_value(value: Any) -> float | int | list:
  """Scalars become Python numbers and arrays nested lists, for json.dumps."""
  arr = np.asarray(value)
  if arr.ndim == 0:
    return arr.item()
  return arr.tolist()


class MetricWriter:
  """Writes scalars to `workdir/metrics.jsonl` and to TensorBoard (`tb/`).

  Array values (e.g. per-expert loads [E]) are stored as lists in the jsonl
  file and as one TensorBoard curve per element, `name/0`, `name/1`, ...

  On resume call truncate_after(step) (or pass resume_step) before writing,
  so the jsonl file ends up identical to that of an uninterrupted run.
  """

  def __init__(self, workdir: str | os.PathLike,
               resume_step: int | None = None):
    self.workdir = pathlib.Path(workdir)
    self.workdir.mkdir(parents=True, exist_ok=True)
    self.jsonl_path = self.workdir / 'metrics.jsonl'
    self.tb_dir = self.workdir / 'tb'
    self._file = None
    self._tb = None
    self._purge_step = None
    if resume_step is not None:
      self.truncate_after(resume_step)

  def truncate_after(self, step: int) -> None:
    """Drops jsonl lines with step > `step`, atomically.

    A torn last line (a crash mid-write) is dropped too. TensorBoard events
    after `step` are purged when the event writer opens, so call this before
    the first write().
    """
    self._close_jsonl()
    if self._tb is None:
      # tensorboardX records a purge marker so TensorBoard hides the stale
      # events that the interrupted run wrote after the checkpoint.
      self._purge_step = int(step) + 1
    if not self.jsonl_path.exists():
      return
    kept = []
    with open(self.jsonl_path, 'r', encoding='utf-8') as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        record_step = record.get('step') if isinstance(record, dict) else None
        if isinstance(record_step, (int, float)) and record_step <= step:
          kept.append(line if line.endswith('\n') else line + '\n')
    atomic_write(self.jsonl_path, ''.join(kept).encode('utf-8'))

  def write(self, step: int, scalars: dict[str, Any]) -> None:
    """Appends one record {'step': step, **scalars}; values may be arrays."""
    step = int(step)
    record = {'step': step}
    record.update({k: _to_json_value(v) for k, v in scalars.items()})
    if self._file is None:
      self._file = open(self.jsonl_path, 'a', encoding='utf-8')
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()
    tb = self._tensorboard()
    for name, value in scalars.items():
      arr = np.asarray(value, dtype=np.float64)
      if arr.ndim == 0:
        tb.add_scalar(name, float(arr), step)
        continue
      for index in np.ndindex(arr.shape):
        tag = '/'.join([name] + [str(i) for i in index])
        tb.add_scalar(tag, float(arr[index]), step)
    tb.flush()

  def _tensorboard(self) -> tensorboardX.SummaryWriter:
    if self._tb is None:
      self._tb = tensorboardX.SummaryWriter(
          logdir=str(self.tb_dir), purge_step=self._purge_step)
    return self._tb

  def _close_jsonl(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def close(self) -> None:
    self._close_jsonl()
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def format_duration(seconds: float) -> str:
  """Short human duration: '42s', '1m12s', '2h05m'."""
  if not math.isfinite(seconds):
    return '?'
  seconds = int(round(max(seconds, 0.0)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f'{hours}h{minutes:02d}m'
  if minutes:
    return f'{minutes}m{secs:02d}s'
  return f'{secs}s'


def _format_field(value: Any) -> str:
  if isinstance(value, (float, np.floating)) or (
      isinstance(value, np.ndarray) and value.ndim == 0):
    return f'{float(value):.4g}'
  return str(value)


class Progress:
  """Training progress: a rich bar on a terminal, periodic lines otherwise.

  On a tty, a `rich` progress bar (step, bar, rate, ETA, latest loss) is
  redrawn in place at most ten times a second. Elsewhere (CI logs, files,
  schedulers' output files) one line such as `step 120/500 loss 2.31 eta
  1m12s` is written every `every` steps and for the last step, because
  redraw sequences make such logs unreadable.
  """

  def __init__(self, total_steps: int, start_step: int = 0,
               stream: TextIO = sys.stderr, every: int | None = None,
               clock: Callable[[], float] = time.monotonic):
    self.total_steps = int(total_steps)
    self.start_step = int(start_step)
    self.stream = stream
    self.every = every or max(1, self.total_steps // 20)
    self._clock = clock
    self._tty = bool(getattr(stream, 'isatty', lambda: False)())
    self._t0 = clock()
    self._last_draw = -math.inf
    self._last = None  # (step, fields) of the last update.
    self._printed_step = None
    self._bar = self._task = None
    if self._tty:
      self._bar = rich.progress.Progress(
          rich.progress.TextColumn('step {task.completed}/{task.total}'),
          rich.progress.BarColumn(),
          rich.progress.TextColumn('{task.fields[rate]} step/s eta '
                                   '{task.fields[eta]}{task.fields[info]}'),
          console=rich.console.Console(file=stream),
          auto_refresh=False)  # Redrawn from update(): no thread.
      self._task = self._bar.add_task('train', total=self.total_steps,
                                      completed=self.start_step, rate='0.00',
                                      eta='?', info='')
      self._bar.start()

  def _rate_and_eta(self, step: int) -> tuple[float, float]:
    elapsed = self._clock() - self._t0
    done = step - self.start_step
    if done <= 0 or elapsed <= 0:
      return 0.0, math.inf
    rate = done / elapsed
    return rate, (self.total_steps - step) / rate

  def _fields_text(self, fields: dict[str, Any]) -> str:
    return ''.join(f' {k} {_format_field(v)}' for k, v in fields.items())

  def update(self, step: int, **fields: Any) -> None:
    """Reports that `step` is done; fields (e.g. loss=2.31) are shown too."""
    step = int(step)
    self._last = (step, fields)
    if self._tty:
      now = self._clock()
      if now - self._last_draw >= 0.1 or step >= self.total_steps:
        self._last_draw = now
        self._draw_bar(step, fields)
    elif step % self.every == 0 or step >= self.total_steps:
      self._print_line(step, fields)

  def report(self, text: str) -> None:
    """Prints `text` as a line of its own (above the bar on a terminal).

    The progress line shows the training loss; evaluations, every
    train.eval_every steps, are news a user waits for, so they get a line
    when they happen rather than living only in metrics.jsonl.
    """
    if self._bar is not None:
      self._bar.console.print(text, highlight=False)
      self._bar.refresh()
    else:
      self.stream.write(text + '\n')
      self.stream.flush()

  def _draw_bar(self, step: int, fields: dict[str, Any]) -> None:
    rate, eta = self._rate_and_eta(step)
    self._bar.update(self._task, completed=step, rate=f'{rate:.2f}',
                     eta=format_duration(eta),
                     info=self._fields_text(fields))
    self._bar.refresh()

  def _print_line(self, step: int, fields: dict[str, Any]) -> None:
    rate, eta = self._rate_and_eta(step)
    self.stream.write(
        f'step {step}/{self.total_steps}{self._fields_text(fields)} '
        f'{rate:.2f} step/s eta {format_duration(eta)}\n')
    self.stream.flush()
    self._printed_step = step

  def close(self) -> None:
    """Shows the final state and ends the bar's line."""
    if self._last is not None:
      step, fields = self._last
      if self._tty:
        self._draw_bar(step, fields)
      elif self._printed_step != step:
        self._print_line(step, fields)
    if self._bar is not None:
      self._bar.stop()  # Leaves the bar's last state on its own line.
      self._bar = None
    self._last = None


def eval_line(step: int, metrics: dict[str, float], unit: str) -> str:
  """'eval at step 200: loss 1.2846 nats/byte (1.8533 bits/byte)'."""
  return (f'eval at step {step}: loss {metrics["eval/loss"]:.4f} nats/{unit} '
          f'({metrics[f"eval/bits_per_{unit}"]:.4f} bits/{unit})')
