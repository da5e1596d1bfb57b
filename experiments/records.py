"""One run's record: train it (or reuse an identical finished run) and read its metrics.

runs.csv has one row per (variant, seed); curves.csv the validation loss and
routing metrics over steps. Both are rewritten atomically after each run, so
an interrupted ablation keeps every finished run.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import time

import numpy as np

from experiments import scheduler
from experiments.run_hash import (config_hash, legacy_config_hash,
                                  record_defaults)
from experiments.run_store import read_csv, recorded_cpus

# Eval metrics copied into runs.csv as eval_<name> (see train/step.py).
EVAL_FIELDS = ('loss', 'bits_per_byte', 'dropped_fraction',
               'unrouted_fraction', 'max_violation', 'dead_expert_fraction',
               'router_logit_max', 'router_logsumexp')
# Training-log metrics (means over MoE layers) kept as curves;
# experts_per_token_mean only where it varies (ReLU routing, null experts,
# expert choice): the real expert passes per token that match their FLOPs.
CURVE_TRAIN_METRICS = ('max_violation', 'router_logit_max', 'router_logsumexp',
                       'dropped_fraction', 'experts_per_token_mean')


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
      'defaults_hash': record_defaults(),
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
      # So does the CPU count the process saw when jax started
      # (experiments/scheduler.py): 1 for a pinned run.
      'cpus': scheduler.process_cpus(),
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
  """The ablation's eval-only counterfactuals of the run's last checkpoint,
  and its checkpoint_metrics."""
  from moe_jax.train.evaluate import evaluate_checkpoint  # Slow import.
  row = dict(ab.checkpoint_metrics.measure(config, workdir)
             if ab.checkpoint_metrics else {})
  for name, eval_overrides in ab.extra_evals.items():
    kwargs = {k.replace('.', '__'): v for k, v in eval_overrides.items()}
    metrics = evaluate_checkpoint(config, str(workdir), **kwargs)
    row[f'eval_loss@{name}'] = metrics['eval/loss']
    row[f'eval_dropped_fraction@{name}'] = metrics['eval/dropped_fraction']
  return row


def find_finished(results_root: pathlib.Path, config, exclude: pathlib.Path,
                  cpus: int) -> tuple[dict, list[dict], pathlib.Path] | None:
  """A finished run with this exact config in another ablation's results.

  Ablations share runs (switch_top1 at the regime is also α = 1e-2, c_z =
  1e-3, E = 8 and train cf 1.25); the config hash covers every field, steps
  and seed included; with the same XLA flags and `cpus` (the CPU count the
  run would train with), a match is the same computation.

  Returns:
    (its runs.csv row, its curves, its workdir) or None.
  """
  hashes = (config_hash(config), legacy_config_hash(config))
  # The same computation also needs the same threading (scheduler.py): a
  # row without a CPU count was made unpinned, before 2026-12-06.
  xla_flags = os.environ.get('XLA_FLAGS', '')
  for csv_path in sorted(pathlib.Path(results_root).glob('*/runs.csv')):
    if csv_path.parent.resolve() == pathlib.Path(exclude).resolve():
      continue
    for r in read_csv(csv_path):
      if (r.get('config_hash') in hashes and r.get('status') == 'ok'
          and r.get('xla_flags', '') == xla_flags
          and recorded_cpus(r) == cpus):
        curves = [c for c in read_csv(csv_path.parent / 'curves.csv')
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
  if ab.extra_evals or ab.checkpoint_metrics:
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
