"""One run's record: train it, read its metrics, and keep runs.csv/curves.csv.

runs.csv has one row per (variant, seed); curves.csv the validation loss and
routing metrics over steps. Both are rewritten atomically after each run, so
an interrupted ablation keeps every finished run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import pathlib
import time

import numpy as np
from flax import traverse_util

from moe_jax.errors import UserInputError
from moe_jax.files import atomic_write

# Eval metrics copied into runs.csv as eval_<name> (see train/step.py).
EVAL_FIELDS = ('loss', 'bits_per_byte', 'dropped_fraction',
               'unrouted_fraction', 'max_violation', 'dead_expert_fraction',
               'router_logit_max', 'router_logsumexp')
# Training-log metrics (means over MoE layers) kept as curves.
CURVE_TRAIN_METRICS = ('max_violation', 'router_logit_max', 'router_logsumexp',
                       'dropped_fraction')


def _flat(tree: dict) -> dict:
  """{'moe.top_k': 1, ...}: a config dict's fields by dotted name."""
  return traverse_util.flatten_dict(tree, sep='.')


def _digest(value) -> str:
  text = json.dumps(value, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:12]


def _legacy_flat(config) -> dict:
  """The config's flat fields under the names they had when runs.csv began
  (router options were flat moe.* fields; moe_jax/config/renames.py), so
  every recorded run keeps its hash."""
  from moe_jax.config import renames  # pylint: disable=g-import-not-at-top
  return renames.to_legacy(_flat(config.to_dict()))


def _nested(flat: dict) -> dict:
  out = {}
  for key, value in flat.items():
    *path, name = key.split('.')
    node = out
    for part in path:
      node = node.setdefault(part, {})
    node[name] = value
  return out


def config_hash(config) -> str:
  """Identifies a run by the fields it sets away from moe_jax's defaults.

  So a new config field (added with a default that keeps old behaviour)
  leaves every finished run valid. Changing a default's value changes what
  the ablations compute: runs.csv records defaults_hash, and the runner warns
  when it differs from today's.
  """
  from moe_jax.config.default_config import get_default_config  # pylint: disable=g-import-not-at-top
  defaults = _legacy_flat(get_default_config())
  changed = {k: v for k, v in _legacy_flat(config).items()
             if k not in defaults or defaults[k] != v}
  return _digest(changed)


def legacy_config_hash(config) -> str:
  """The hash of the whole config, which runs.csv held before 2026-11-28."""
  return _digest(_nested(_legacy_flat(config)))


def defaults_hash() -> str:
  from moe_jax.config.default_config import get_default_config  # pylint: disable=g-import-not-at-top
  return _digest(_nested(_legacy_flat(get_default_config())))


def _read_jsonl(workdir: pathlib.Path) -> list[dict]:
  path = workdir / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.open() if line.strip()]


def _layer_mean(record: dict, name: str) -> float | None:
  values = [np.mean(v) for k, v in record.items()
            if k.startswith('moe_') and k.endswith('/' + name)]
  return float(np.mean(values)) if values else None


def train_run(ab, variant: str, seed: int, config,
              workdir: pathlib.Path, run_config=None) -> dict:
  """Trains (or resumes) one run, then its extra evals; returns its row.

  run_config, when given, is what trains; `config` (hashed into the row)
  differs from it only in where it finds files (see run.py's init_run).
  """
  from moe_jax.train.checkpoint import saved_steps  # Slow imports.
  from moe_jax.train.trainer import train_and_evaluate
  # A resumed run's wall time covers only its last part: say so in the row.
  saved = saved_steps(workdir)
  t0 = time.perf_counter()
  final = train_and_evaluate(run_config or config, str(workdir))
  wall = time.perf_counter() - t0
  logs = _read_jsonl(workdir)
  rates = [r['tokens_per_sec'] for r in logs if 'tokens_per_sec' in r]
  last_train = [r for r in logs if 'loss' in r and 'eval/loss' not in r][-1]
  fractions = [last_train[k] for k in sorted(last_train)
               if k.endswith('/expert_fraction')]
  tokens_per_step = config.batch_size * config.seq_len
  tps = float(np.mean(rates)) if rates else math.nan
  cpu = [r['cpu_seconds_per_step'] for r in logs if 'cpu_seconds_per_step' in r]
  train_cpu_s = config.train.num_steps * float(np.mean(cpu)) if cpu else math.nan
  row = {
      'variant': variant, 'seed': seed, 'steps': config.train.num_steps,
      'status': 'ok', 'config_hash': config_hash(config),
      'defaults_hash': defaults_hash(),
      **{f'eval_{k}': final[f'eval/{k}'] for k in EVAL_FIELDS},
      'tokens_per_sec': tps,
      'train_s': config.train.num_steps * tokens_per_step / tps,
      # The process CPU time of the same steps: what the equal-time claims
      # read, since a single-threaded run's CPU time does not grow when other
      # jobs share the cores; cpu_share (≈ 1 alone) shows how much they did.
      'train_cpu_s': train_cpu_s,
      'cpu_share': train_cpu_s / (config.train.num_steps * tokens_per_step / tps),
      'wall_s': wall,
      'resumed_from_step': max(saved, default=0),
      # XLA:CPU's threading sets the matmuls' summation order, so a run is
      # bit-reproducible only with the same flags (experiments/README.md).
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'expert_fraction': json.dumps(
          [[round(x, 4) for x in f] for f in fractions]),
  }
  row.update(describe_data(config))
  row.update(extra_evals(ab, config, workdir))
  return row


def describe_data(config) -> dict:
  """The corpus a run read and what its validation split held out."""
  from moe_jax.train.setup import load_data  # Slow import.
  data = load_data(config)
  return {'data': data.corpus.name, 'held_out': data.held_out}


def extra_evals(ab, config, workdir: pathlib.Path) -> dict:
  """The ablation's eval-only counterfactuals of the run's last checkpoint."""
  from moe_jax.train.evaluate import evaluate_checkpoint  # Slow import.
  row = {}
  for name, eval_overrides in ab.extra_evals.items():
    kwargs = {k.replace('.', '__'): v for k, v in eval_overrides.items()}
    metrics = evaluate_checkpoint(config, str(workdir), **kwargs)
    row[f'eval_loss@{name}'] = metrics['eval/loss']
    row[f'eval_dropped_fraction@{name}'] = metrics['eval/dropped_fraction']
  return row


def find_finished(results_root: pathlib.Path, config,
                  exclude: pathlib.Path) -> tuple[dict, list[dict],
                                                  pathlib.Path] | None:
  """A finished run with this exact config in another ablation's results.

  Ablations share runs (switch_top1 at the regime is also α = 1e-2, c_z =
  1e-3, E = 8 and train cf 1.25); the config hash covers every field, steps
  and seed included, so a match is the same computation.

  Returns:
    (its runs.csv row, its curves, its workdir) or None.
  """
  hashes = (config_hash(config), legacy_config_hash(config))
  for csv_path in sorted(pathlib.Path(results_root).glob('*/runs.csv')):
    if csv_path.parent.resolve() == pathlib.Path(exclude).resolve():
      continue
    for r in _read_csv(csv_path):
      if r.get('config_hash') in hashes and r.get('status') == 'ok':
        curves = [c for c in _read_csv(csv_path.parent / 'curves.csv')
                  if c['variant'] == r['variant'] and c['seed'] == r['seed']]
        workdir = (csv_path.parent / 'workdirs' / r['variant'] /
                   f'seed{r["seed"]}')
        return r, curves, workdir
  return None


def reuse_run(ab, variant: str, seed: int, config, found) -> tuple[dict, list]:
  """(row, curves) of `found` relabelled as this ablation's variant.

  Extra evals need the checkpoint, so they run on the other ablation's
  workdir; raises FileNotFoundError if it is gone (then train instead).
  """
  row, curves, workdir = found
  source = f'{workdir.parent.parent.parent.name}/{row["variant"]}'
  row = {k: v for k, v in row.items() if '@' not in k}
  if ab.extra_evals:
    if not (workdir / 'checkpoints').is_dir():
      raise FileNotFoundError(workdir)
    row.update(extra_evals(ab, config, workdir))
  row.update(variant=variant, seed=seed, reused_from=source,
             config_hash=config_hash(config))
  return row, [{**c, 'variant': variant} for c in curves]


def diverged_row(variant: str, seed: int, config, message: str) -> dict:
  return {'variant': variant, 'seed': seed, 'steps': config.train.num_steps,
          'status': 'diverged: ' + message.split(';')[0],
          'config_hash': config_hash(config), 'eval_loss': math.nan}


def read_curves(workdir: pathlib.Path, variant: str, seed: int) -> list[dict]:
  """Long-format rows (variant, seed, step, metric, value) of one run."""
  rows = []
  for r in _read_jsonl(workdir):
    step = r.get('step')
    if 'eval/loss' in r:
      rows.append(dict(variant=variant, seed=seed, step=step,
                       metric='eval_loss', value=r['eval/loss']))
    elif 'loss' in r:
      rows.append(dict(variant=variant, seed=seed, step=step,
                       metric='train_loss', value=r['loss']))
      for name in CURVE_TRAIN_METRICS:
        value = _layer_mean(r, name)
        if value is not None:
          rows.append(dict(variant=variant, seed=seed, step=step,
                           metric=name, value=value))
  return rows


class RunStore:
  """runs.csv and curves.csv of one ablation's results folder."""

  def __init__(self, out: pathlib.Path):
    self.out = pathlib.Path(out)
    self.csv_path = self.out / 'runs.csv'
    self.curves_path = self.out / 'curves.csv'
    self._rows = _read_csv(self.csv_path)
    self._curves = _read_csv(self.curves_path)

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

  def stale_defaults(self) -> bool:
    """Whether a recorded run used other moe_jax defaults than today's."""
    now = defaults_hash()
    return any(r.get('defaults_hash') not in (None, '', now) and
               isinstance(r.get('defaults_hash'), str) for r in self._rows)

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


def _read_csv(path: pathlib.Path) -> list[dict]:
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
