"""runs.csv and curves.csv of an ablation: read, appended to, rewritten atomically.

An interrupted ablation keeps every finished run: each write replaces the
whole file in one rename (moe_jax.files.atomic_write).
"""

from __future__ import annotations

import csv
import io
import math
import pathlib

from experiments.run_hash import (changed_defaults, config_hash, defaults_hash,
                                  legacy_config_hash)
from moe_jax.errors import UserInputError
from moe_jax.files import atomic_write


class RunStore:
  """runs.csv and curves.csv of one ablation's results folder."""

  def __init__(self, out: pathlib.Path):
    self.out = pathlib.Path(out)
    self.csv_path = self.out / 'runs.csv'
    self.curves_path = self.out / 'curves.csv'
    self._rows = read_csv(self.csv_path)
    self._curves = read_csv(self.curves_path)

  def rows(self) -> list[dict]:
    return list(self._rows)

  def curves(self) -> list[dict]:
    return list(self._curves)

  def _find(self, variant: str, seed: int) -> dict | None:
    for r in self._rows:
      if r['variant'] == variant and int(r['seed']) == seed:
        return r
    return None

  def has(self, variant: str, seed: int) -> bool:
    return self._find(variant, seed) is not None

  def check_same_config(self, variant: str, seed: int, config) -> None:
    """Raises unless the recorded run (if any) had this config.

    A row recorded with the legacy whole-config hash is relabelled with
    today's hash when it matches (saved with the next add()).
    """
    row = self._find(variant, seed)
    if row is None or row['config_hash'] == config_hash(config):
      return
    if row['config_hash'] == legacy_config_hash(config):
      row['config_hash'] = config_hash(config)
      return
    raise UserInputError(
        f'{self.csv_path} already holds {variant} seed {seed} from another '
        'config (other steps or overrides); pass a new --out, or delete '
        'that folder to start over.')

  def check_same_cpus(self, cpus: int, pinned: bool) -> None:
    """Raises unless the recorded runs trained with `cpus` CPUs each.

    XLA:CPU's programs depend on the CPU count (experiments/scheduler.py),
    so one folder holds one kind. A row without a count was made unpinned,
    before 2026-12-06: it goes with unpinned runs only.
    """
    for r in self._rows:
      recorded = recorded_cpus(r)
      if (recorded == cpus) if recorded is not None else not pinned:
        continue
      what = (f'on {recorded} CPU(s) each' if recorded is not None
              else 'unpinned, before 2026-12-06')
      raise UserInputError(
          f'{self.csv_path} holds runs trained {what}, and this command '
          f'would train on {cpus} CPU(s) each, which changes the numbers '
          f'bit for bit; {"add" if pinned else "drop"} --unpinned, or pass '
          'a new --out.')

  def stale_defaults(self) -> list[str]:
    """What differs between the defaults of the recorded runs and today's:
    for each older defaults_hash, the fields whose default value changed
    (run_hash.changed_defaults), or that it is unknown; empty when none."""
    now = defaults_hash()
    old = {r.get('defaults_hash') for r in self._rows} - {None, '', now}
    notes = []
    for digest in sorted(h for h in old if isinstance(h, str)):
      changed = changed_defaults(digest)
      if changed is None:
        notes.append(f'{digest}: unknown (no snapshot in '
                     'experiments/results/defaults/)')
      elif changed:
        notes.append(f'{digest}: ' + ', '.join(changed))
    return notes

  def save(self) -> None:
    if self._rows:
      self.out.mkdir(parents=True, exist_ok=True)
      _write_csv(self.csv_path, self._rows)

  def add(self, row: dict, curves: list[dict]) -> None:
    self._rows = [r for r in self._rows if not (
        r['variant'] == row['variant'] and int(r['seed']) == row['seed'])]
    self._rows.append(row)
    self._curves = [c for c in self._curves if not (
        c['variant'] == row['variant'] and int(c['seed']) == row['seed'])]
    self._curves.extend(curves)
    self.out.mkdir(parents=True, exist_ok=True)
    _write_csv(self.csv_path, self._rows)
    _write_csv(self.curves_path, self._curves)


def recorded_cpus(row: dict) -> int | None:
  """The CPU count a row's run trained with, or None for a row made before
  rows recorded it (2026-12-06; read back from runs.csv as NaN)."""
  value = row.get('cpus')
  if isinstance(value, (int, float)) and value == value:
    return int(value)
  return None


def read_csv(path: pathlib.Path) -> list[dict]:
  if not path.exists():
    return []
  with path.open(newline='') as f:
    return [{k: v if k in _TEXT_COLUMNS else _parse(v) for k, v in r.items()}
            for r in csv.DictReader(f)]


# Columns kept as text even when they look like numbers (a hash of digits).
_TEXT_COLUMNS = ('variant', 'status', 'config_hash', 'defaults_hash',
                 'expert_fraction', 'metric', 'reused_from', 'command',
                 'data', 'held_out', 'xla_flags')


def _parse(value: str):
  if value == '':
    return math.nan
  for kind in (int, float):
    try:
      return kind(value)
    except ValueError:
      pass
  return value


def _write_csv(path: pathlib.Path, rows: list[dict]) -> None:
  fields = []
  for r in rows:
    fields.extend(k for k in r if k not in fields)
  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=fields, restval='')
  writer.writeheader()
  writer.writerows(rows)
  atomic_write(path, text.getvalue().encode())
