"""The ablation runner (experiments/) end to end, and the verdict rule.

The runner test trains a 2-variant x 2-seed ablation of `:tiny` configs for a
few steps; CI never runs the real ablations.
"""

import csv
import dataclasses
import os
import pathlib

import numpy as np
import pytest

from configs import switch_top1
from experiments import (judge, records, run, run_hash, run_store, scheduler,
                         verdict)
from experiments.ablation import (Ablation, CheckpointMetrics, Comparison,
                                  Variant, apply_overrides)
from experiments.scheduler import Seeds
from moe_jax.train import setup


# --------------------------------------------------------------- verdicts --

def test_verdict_clear_win_agrees():
  v = verdict.judge([1.00, 1.01, 0.99, 1.00], [1.20, 1.21, 1.19, 1.22])
  assert v.verdict == 'agrees' and v.difference < 0 and v.p_value < 0.001


def test_verdict_clear_loss_disagrees():
  v = verdict.judge([1.20, 1.21, 1.19], [1.00, 1.01, 0.99])
  assert v.verdict == 'disagrees' and v.difference > 0


def test_verdict_noise_is_inconclusive():
  rng = np.random.default_rng(0)
  a, b = rng.normal(1.0, 0.05, 3), rng.normal(1.0, 0.05, 3)
  assert verdict.judge(a, b).verdict == 'inconclusive'


def test_verdict_paired_sees_a_consistent_small_shift():
  # Seeds differ a lot, but each seed's pair differs by the same 0.01: only a
  # paired test (one checkpoint evaluated two ways) can see it.
  base = np.array([1.0, 1.3, 0.8, 1.1])
  noise = np.array([0.0, 0.001, -0.001, 0.0005])
  assert verdict.judge(base - 0.01 + noise, base).verdict == 'inconclusive'
  assert verdict.judge(base - 0.01 + noise, base,
                       paired=True).verdict == 'agrees'


def test_verdicts_pair_runs_by_seed():
  # Seed 1's batches are harder for both variants; the claim holds per seed.
  base = {0: 1.0, 1: 1.3, 2: 0.8}
  rows = [dict(variant='a', seed=s, eval_loss=v - 0.01 + 1e-4 * s)
          for s, v in base.items()]
  rows += [dict(variant='b', seed=s, eval_loss=v) for s, v in base.items()]
  ab = Ablation(name='x', title='', source='', base=_tiny,
                variants=(Variant('a', {}), Variant('b', {})),
                comparisons=(Comparison('a < b', ('a', 'eval_loss'),
                                        ('b', 'eval_loss'), 'equal steps'),),
                steps=1, quick_steps=1)
  (j,) = judge.verdicts(ab, rows)
  assert j.verdict.verdict == 'agrees' and j.seeds == [0, 1, 2]
  assert not j.note and 0 < j.mde < 0.01
  # A seed on one side only is left out, and the rest stay paired.
  (j,) = judge.verdicts(ab, [r for r in rows if not (
      r['variant'] == 'a' and r['seed'] == 2)])
  assert j.verdict.verdict == 'agrees' and j.seeds == [0, 1]
  assert j.note == 'seeds without a pair left out: 2'
  # A diverged run has nothing to pair: Welch over the finite values, named,
  # which cannot see a 0.01 shift under a 0.3 spread.
  diverged = [dict(r, status='diverged: nan', eval_loss=float('nan'))
              if (r['variant'], r['seed']) == ('a', 2) else r for r in rows]
  (j,) = judge.verdicts(ab, diverged)
  assert j.verdict.verdict == 'inconclusive'
  assert j.note == "a seed 2 diverged; Welch's test on all finite values"


def test_minimum_detectable_effect_has_the_stated_power():
  # Simulated paired experiments whose true effect is the mde: the t-test
  # finds it in 80% of them.
  sd, n = 0.02, 5
  mde = verdict.min_detectable_effect(sd, n)
  rng = np.random.default_rng(0)
  diffs = rng.normal(-mde, sd, size=(4000, n))
  found = np.mean([verdict.judge(d, np.zeros(n), paired=True).verdict ==
                   'agrees' for d in diffs])
  assert 0.77 < found < 0.83
  # Fewer seeds or more spread: a larger mde. Seeds needed for 0.01 at sd
  # 0.01 by the same power function (10, as a table of t-test power gives).
  assert verdict.min_detectable_effect(sd, 3) > mde
  assert verdict.min_detectable_effect(2 * sd, n) > mde
  assert verdict.seeds_needed(0.01, 0.01) == 10
  assert np.isnan(verdict.min_detectable_effect(sd, 1))


def test_verdict_needs_two_seeds_a_side():
  assert verdict.judge([1.0], [2.0, 2.1]).verdict == 'inconclusive'


# ----------------------------------------------------------------- runner --

def test_config_hash_ignores_new_default_fields_but_not_changes(monkeypatch):
  from moe_jax.config import default_config
  c = switch_top1.get_config('tiny')
  before = run_hash.config_hash(c)
  real = default_config.get_default_config

  def with_new_field():
    d = real()
    d.moe.new_option = 0  # A field added later, off by default.
    return d
  monkeypatch.setattr(default_config, 'get_default_config', with_new_field)
  c2 = switch_top1.get_config('tiny')
  assert run_hash.config_hash(c2) == before
  c2.moe.new_option = 1
  assert run_hash.config_hash(c2) != before
  c.model.d_model = 64
  assert run_hash.config_hash(c) != before



def test_stale_defaults_names_changed_values_not_new_fields(tmp_path,
                                                            monkeypatch):
  from moe_jax.config import default_config
  monkeypatch.setattr(run_hash, 'DEFAULTS_DIR', tmp_path / 'defaults')
  old = run_hash.record_defaults()
  store = run_store.RunStore(tmp_path / 'ab')
  store.add({'variant': 'a', 'seed': 0, 'defaults_hash': old}, [])
  real = default_config.get_default_config

  def patched(new_field=False, changed=False):
    def get():
      d = real()
      if new_field:
        d.moe.new_option = 0  # A field added later, off by default.
      if changed:
        d.moe.z_loss_weight = 0.5
      return d
    return get

  monkeypatch.setattr(default_config, 'get_default_config', patched(True))
  assert run_hash.defaults_hash() != old
  assert store.stale_defaults() == []
  monkeypatch.setattr(default_config, 'get_default_config',
                      patched(True, True))
  assert store.stale_defaults() == [f'{old}: moe.z_loss_weight']
  (tmp_path / 'defaults' / f'{old}.json').unlink()
  assert 'unknown' in store.stale_defaults()[0]

def test_legacy_hash_rows_are_accepted_and_relabelled(tmp_path):
  c = switch_top1.get_config('tiny')
  store = run_store.RunStore(tmp_path)
  store.add({'variant': 'a', 'seed': 0, 'status': 'ok', 'eval_loss': 1.0,
             'config_hash': run_hash.legacy_config_hash(c)}, [])
  store = run_store.RunStore(tmp_path)
  store.check_same_config('a', 0, c)
  store.save()
  assert run_store.RunStore(tmp_path).rows()[0]['config_hash'] == (
      run_hash.config_hash(c))
  c.model.d_model = 64
  with pytest.raises(run.UserInputError, match='another config'):
    store.check_same_config('a', 0, c)


def _tiny(steps):
  c = switch_top1.get_config('tiny')
  c.train.num_steps = steps
  c.train.eval_every = c.train.checkpoint_every = steps
  c.train.log_every = 1
  return c


PREPARED = []  # One entry per call of TINY's prepare.


def _has_checkpoint(config, workdir):
  del config
  return {'has_checkpoint': float((pathlib.Path(workdir) /
                                   'checkpoints').is_dir())}


TINY = Ablation(
    name='tiny', title='test', source='none',
    base=_tiny,
    variants=(Variant('top1', {}), Variant('dense', {'model.moe_every': 0})),
    comparisons=(Comparison('top1 beats dense', ('top1', 'eval_loss'),
                            ('dense', 'eval_loss'), 'equal steps'),
                 Comparison('cf 4 beats cf 1', ('top1', 'eval_loss@cf4'),
                            ('top1', 'eval_loss'), 'same checkpoint')),
    steps=3, quick_steps=2,
    extra_evals={'cf4': {'moe.eval_capacity_factor': 4.0}},
    checkpoint_metrics=CheckpointMetrics(('has_checkpoint',),
                                         _has_checkpoint),
    prepare=lambda: PREPARED.append(1))


def _rows(out):
  with (out / 'runs.csv').open() as f:
    return list(csv.DictReader(f))


def test_runner_end_to_end_then_skips_finished_runs(tmp_path, monkeypatch,
                                                    compilation_cache_on):
  monkeypatch.setattr(run, 'RESULTS', tmp_path)
  out = tmp_path / 'tiny'
  prepared = len(PREPARED)
  run.run_ablation(TINY, seeds=Seeds(2), steps=3, out=out, overrides={},
                   command='test')
  assert len(PREPARED) == prepared + 1  # Once, before the first run.
  rows = _rows(out)
  # The checkpoint metric ran on each run's own workdir, after training.
  assert all(float(r['has_checkpoint']) == 1 for r in rows)
  assert '## From the last checkpoints' in (out / 'summary.md').read_text()
  assert sorted((r['variant'], r['seed']) for r in rows) == [
      ('dense', '0'), ('dense', '1'), ('top1', '0'), ('top1', '1')]
  for r in rows:
    assert r['status'] == 'ok' and int(r['steps']) == 3
    assert 0 < float(r['eval_loss']) < 6 and float(r['tokens_per_sec']) > 0
    assert float(r['eval_loss@cf4']) > 0
  # Seeds differ; the dense model routes nothing.
  top1 = [float(r['eval_loss']) for r in rows if r['variant'] == 'top1']
  assert top1[0] != top1[1]
  assert all(float(r['eval_max_violation']) == 0 for r in rows
             if r['variant'] == 'dense')
  with (out / 'curves.csv').open() as f:
    curves = list(csv.DictReader(f))
  assert {c['metric'] for c in curves} >= {'eval_loss', 'train_loss'}
  summary = (out / 'summary.md').read_text()
  assert '| top1 |' in summary and '| dense |' in summary
  assert 'top1 beats dense' in summary and 'cf 4 beats cf 1' in summary
  for png in ('val_loss_curves.png', 'final_loss.png'):
    assert (out / png).stat().st_size > 1000 and png in summary

  # A rerun trains nothing; one missing row is retrained on its own.
  calls = []
  real = records.train_run
  monkeypatch.setattr(records, 'train_run',
                      lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
  run.run_ablation(TINY, seeds=Seeds(2), steps=3, out=out, overrides={},
                   command='test')
  assert calls == [] and len(PREPARED) == prepared + 1  # Nothing to do.
  kept = [r for r in rows if (r['variant'], r['seed']) != ('dense', '1')]
  with (out / 'runs.csv').open('w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(kept)
  run.run_ablation(TINY, seeds=Seeds(2), steps=3, out=out, overrides={},
                   command='test')
  assert calls == [('dense', 1)]
  assert len(_rows(out)) == 4

  # Another ablation holding an identical run reuses it (and evaluates its
  # checkpoint for its own extra evals) instead of training it again.
  other = dataclasses.replace(
      TINY, name='other', variants=(Variant('same_as_top1', {}),),
      comparisons=(), extra_evals={'cf1': {'moe.eval_capacity_factor': 1.0}})
  run.run_ablation(other, seeds=Seeds(1), steps=3, out=tmp_path / 'other',
                   overrides={}, command='test')
  assert calls == [('dense', 1)]
  (reused,) = _rows(tmp_path / 'other')
  original = [r for r in rows if (r['variant'], r['seed']) == ('top1', '0')]
  assert reused['reused_from'] == 'tiny/top1'
  assert reused['eval_loss'] == original[0]['eval_loss']
  assert float(reused['eval_loss@cf1']) > 0 and 'eval_loss@cf4' not in reused
  assert float(reused['has_checkpoint']) == 1  # Measured on tiny's workdir.
  # --fresh retrains it instead, and gets the same loss bit for bit.
  run.run_ablation(other, seeds=Seeds(1), steps=3, out=tmp_path / 'fresh',
                   overrides={}, command='test', reuse=False)
  assert calls == [('dense', 1), ('same_as_top1', 0)]
  (fresh,) = _rows(tmp_path / 'fresh')
  assert 'reused_from' not in fresh or not fresh['reused_from']
  assert fresh['eval_loss'] == original[0]['eval_loss']

  # Other steps into the same folder would mix configs: refused up front.
  with pytest.raises(run.UserInputError, match='another config'):
    run.run_ablation(TINY, seeds=Seeds(2), steps=4, out=out, overrides={},
                     command='test')


def test_cli_rejects_unknown_ablation_and_bad_override(capsys):
  assert run.main(['no_such_ablation']) == 2
  assert 'no ablation' in capsys.readouterr().err
  before = dict(os.environ)
  assert run.main(['regime_scan', '--config.model.no_such_field=1',
                   '--out', '/nonexistent/x']) == 2
  assert 'no_such_field' in capsys.readouterr().err
  # Refused before the runner sets its XLA flags and compilation cache,
  # which would otherwise leak into this process (and its subprocesses).
  assert dict(os.environ) == before
  with pytest.raises(SystemExit):
    run.main(['regime_scan', 'stray'])


@pytest.mark.slow
def test_parallel_workers_train_and_record_every_run(tmp_path, monkeypatch):
  # Two runs at once, each in a spawned single-threaded process pinned to one
  # CPU that loads the ablation by name (benchmarks/ablation_throughput.py
  # shows their numbers equal one-at-a-time runs bit for bit).
  monkeypatch.setenv('XLA_FLAGS', scheduler.RUN_XLA_FLAGS)
  monkeypatch.setattr(run, 'RESULTS', tmp_path)
  tiny = {'model.d_model': 16, 'model.d_ff': 32, 'moe.d_ff': 32,
          'model.num_layers': 2, 'batch_size': 2, 'seq_len': 16,
          'data.max_bytes': 100_000, 'train.eval_every': 2,
          'train.checkpoint_every': 2, 'train.log_every': 1,
          'train.eval_batches': 1}
  rows = run.run_ablation(run.load_ablation('regime'), seeds=Seeds(1),
                          steps=2, out=tmp_path / 'r', overrides=tiny,
                          command='cmd', only=['dense', 'switch_top1'],
                          jobs=2, pin=True)
  assert sorted(r['variant'] for r in rows) == ['dense', 'switch_top1']
  for r in rows:
    assert r['status'] == 'ok' and 0 < r['eval_loss'] < 8  # ln 256 = 5.5.
    assert r['xla_flags'] == scheduler.RUN_XLA_FLAGS
    assert r['cpus'] == (1 if scheduler.can_pin() else os.cpu_count())
    assert (r['command'], r['init_seed'], r['data_seed']) == ('cmd', 0, 0)
    assert r['data'] == 'stdlib' and 'documents' in r['held_out']
  summary = (tmp_path / 'r' / 'summary.md').read_text()
  assert '`cmd`' in summary and 'documents (files) drawn at random' in (
      summary)


def test_cli_refuses_zero_seeds_steps_or_jobs(capsys):
  # 0 used to mean "the default" and was written into the summary as typed.
  for flag in ('--seeds', '--steps', '--jobs'):
    assert run.main(['regime', flag, '0', '--out', '/nonexistent/x']) == 2
    err = capsys.readouterr().err
    assert err.startswith(f'error: {flag} 0 must be a positive integer')
    assert err.count('\n') == 1


def test_seeds_can_vary_the_initialisation_or_the_data_order_alone():
  ab = run.load_ablation('regime')
  def configs(seeds):
    return [(r.seed, r.config(ab)) for r in run.plan_runs(
        ab, seeds=seeds, steps=10, out=pathlib.Path('x'), overrides={})
            if r.variant == 'dense']
  for s, c in configs(Seeds(3)):
    assert (c.seed, c.data.seed) == (s, None)  # Both follow the seed.
  for s, c in configs(Seeds(3, data=7)):
    assert (c.seed, c.data.seed) == (s, 7)
    assert setup.data_seed(c) == 7
  for s, c in configs(Seeds(3, init=7)):
    assert (c.seed, setup.data_seed(c)) == (7, s)
  # The data seed alone sets the batches: same data seed, same batches.
  a = _tiny(3)
  b = _tiny(3)
  a.seed, b.seed, b.data.seed = 1, 2, 1
  batch = lambda c: setup.load_data(c).batches.batch_at(0)['inputs']
  np.testing.assert_array_equal(batch(a), batch(b))
  b.data.seed = 2
  assert not np.array_equal(batch(a), batch(b))


def test_every_ablation_file_builds_its_configs():
  for name in run.available():
    ab = run.load_ablation(name)
    assert len({v.name for v in ab.variants}) == len(ab.variants)
    for v in ab.variants:
      config = apply_overrides(ab.base(ab.quick_steps), v.overrides)
      setup.model_config(config)  # Validates the model and MoE fields.
    names = {v.name for v in ab.variants}
    for comp in ab.comparisons:
      assert comp.better[0] in names and comp.worse[0] in names
