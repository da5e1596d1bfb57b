"""Tests for moe_jax.train.metric_writer."""

import io
import json
import re

import numpy as np

from moe_jax.train import metric_writer


def _read_jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def _tb_scalars(tb_dir):
  """{tag: [(step, value), ...]} from every event file under tb_dir."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  import struct  # pylint: disable=g-import-not-at-top
  out = {}
  for path in sorted(tb_dir.glob('events.out.tfevents.*')):
    buf = path.read_bytes()
    pos = 0
    while pos < len(buf):
      (length,) = struct.unpack('<Q', buf[pos:pos + 8])
      event = event_pb2.Event.FromString(buf[pos + 12:pos + 12 + length])
      pos += 12 + length + 4
      for value in event.summary.value:
        out.setdefault(value.tag, []).append((event.step, value.simple_value))
  return out


def test_writes_jsonl_and_tensorboard(tmp_path):
  with metric_writer.MetricWriter(tmp_path) as writer:
    writer.write(1, {'loss': np.float32(2.5), 'load': np.array([0.25, 0.75])})
    writer.write(2, {'loss': 2.0, 'load': np.array([0.5, 0.5])})
    # Lines are flushed as written, before close().
    assert len(_read_jsonl(tmp_path / 'metrics.jsonl')) == 2
  records = _read_jsonl(tmp_path / 'metrics.jsonl')
  assert records == [{'step': 1, 'loss': 2.5, 'load': [0.25, 0.75]},
                     {'step': 2, 'loss': 2.0, 'load': [0.5, 0.5]}]
  scalars = _tb_scalars(tmp_path / 'tb')
  assert scalars['loss'] == [(1, 2.5), (2, 2.0)]
  assert scalars['load/0'] == [(1, 0.25), (2, 0.5)]
  assert scalars['load/1'] == [(1, 0.75), (2, 0.5)]


def test_resume_matches_an_uninterrupted_run(tmp_path):
  full, resumed = tmp_path / 'full', tmp_path / 'resumed'
  with metric_writer.MetricWriter(full) as writer:
    for step in range(1, 7):
      writer.write(step, {'loss': 1.0 / step})
  with metric_writer.MetricWriter(resumed) as writer:
    for step in range(1, 6):
      writer.write(step, {'loss': 1.0 / step})
  # A crash mid-write leaves a torn line; the checkpoint was at step 3.
  with open(resumed / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 6, "lo')
  with metric_writer.MetricWriter(resumed, resume_step=3) as writer:
    assert [r['step'] for r in _read_jsonl(resumed / 'metrics.jsonl')] == [
        1, 2, 3]
    for step in range(4, 7):
      writer.write(step, {'loss': 1.0 / step})
  assert ((resumed / 'metrics.jsonl').read_text() ==
          (full / 'metrics.jsonl').read_text())
  assert not list(resumed.glob('*.tmp*'))


def test_truncate_after_while_open(tmp_path):
  writer = metric_writer.MetricWriter(tmp_path)
  for step in range(5):
    writer.write(step, {'x': step})
  writer.truncate_after(2)
  writer.write(3, {'x': 30})
  writer.close()
  assert _read_jsonl(tmp_path / 'metrics.jsonl') == [
      {'step': 0, 'x': 0}, {'step': 1, 'x': 1}, {'step': 2, 'x': 2},
      {'step': 3, 'x': 30}]


class _FakeClock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_progress_plain_lines_when_not_a_tty():
  stream, clock = io.StringIO(), _FakeClock()
  progress = metric_writer.Progress(500, start_step=100, stream=stream,
                                    every=100, clock=clock)
  for step in range(101, 451):
    clock.now += 0.5
    progress.update(step, loss=2.3125)
  progress.close()
  lines = stream.getvalue().splitlines()
  assert [line.split()[1] for line in lines] == [
      '200/500', '300/500', '400/500', '450/500']
  # 100 steps in 50 s: 2 steps/s, 300 steps left at step 200.
  assert lines[0] == 'step 200/500 loss 2.312 2.00 step/s eta 2m30s'
  assert '\r' not in stream.getvalue()


def test_each_evaluation_gets_a_line_when_it_happens():
  # Eval losses used to reach only metrics.jsonl, never the progress output.
  for stream in (io.StringIO(), _TtyStream()):
    progress = metric_writer.Progress(10, stream=stream, every=5)
    progress.update(4, loss=2.0)
    progress.report(metric_writer.eval_line(
        4, {'eval/loss': 1.28461, 'eval/bits_per_byte': 1.85331}, 'byte'))
    progress.close()
    assert ('eval at step 4: loss 1.2846 nats/byte (1.8533 bits/byte)\n'
            in re.sub(r'\x1b\[[0-9;?]*[A-Za-z]', '', stream.getvalue()))


class _TtyStream(io.StringIO):

  def isatty(self):
    return True


def test_progress_bar_on_a_tty():
  stream, clock = _TtyStream(), _FakeClock()
  progress = metric_writer.Progress(10, stream=stream, clock=clock)
  for step in range(1, 11):
    clock.now += 1.0
    progress.update(step, loss=1.0)
  progress.close()
  # rich draws the bar with terminal escapes; its last state stays on
  # screen, ended by a newline.
  text = re.sub(r'\x1b\[[0-9;?]*[A-Za-z]', '', stream.getvalue())
  assert text.endswith('\n')
  last = re.split(r'[\r\n]', text.rstrip('\n'))[-1]
  assert 'step 10/10' in last and '1.00 step/s' in last, last
  assert 'eta 0s' in last and 'loss 1' in last, last


def test_format_duration():
  assert metric_writer.format_duration(42) == '42s'
  assert metric_writer.format_duration(72) == '1m12s'
  assert metric_writer.format_duration(7500) == '2h05m'
  assert metric_writer.format_duration(float('inf')) == '?'
