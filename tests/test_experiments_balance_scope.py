"""The balance_scope ablation: its variants, its labelled corpus, and the
expert × domain NMI it reads off each checkpoint (experiments/derived.py).

Nothing here trains; the corpus is a small mix written to a temporary folder.
"""

import numpy as np
import pytest
from flax import traverse_util

from experiments import balance_scope, derived, report
from experiments.ablation import apply_overrides
from moe_jax.analysis import corpora, handmade, routing
from moe_jax.analysis import trace as trace_lib
from moe_jax.data.pipeline import eval_batches
from moe_jax.data.split import split_corpus
from moe_jax.train import setup

AB = balance_scope.ABLATION


def _flat(variant):
  config = apply_overrides(AB.base(AB.steps), AB.variant(variant).overrides)
  return traverse_util.flatten_dict(config.to_dict(), sep='.')


def test_variants_differ_only_in_the_scope_and_accumulate():
  flats = {s: _flat(s) for s in balance_scope.SCOPES}
  for s, flat in flats.items():
    assert flat['moe.balance_loss_scope'] == s
    assert flat['train.grad_accum_steps'] == 4 and flat['data.kind'] == 'text'
    assert flat['data.path'] == balance_scope.mix_path()
    differ = {k for k in flat if flat[k] != flats['global'][k]}
    assert differ <= {'moe.balance_loss_scope'}
  # Micro-batches of 4 sequences of the 16: real, and more than one group.
  assert flats['global']['batch_size'] // 4 == 4


@pytest.fixture(scope='module')
def mix(tmp_path_factory):
  path = tmp_path_factory.mktemp('mix') / 'mix.txt'
  return corpora.write_mix(path, 200_000, synthetic_domains=2, seed=0)


def test_the_trainers_validation_windows_carry_the_mixs_labels(mix):
  written = corpora.read_mix(mix)
  again, names = corpora.code_prose_mix(200_000, synthetic_domains=2, seed=0)
  np.testing.assert_array_equal(written.tokens, again.tokens)
  np.testing.assert_array_equal(written.domains, again.domains)
  assert names == ['code', 'prose', 'synthetic 0', 'synthetic 1']
  # A second write keeps the files (no rewrite while runs read them).
  before = corpora.domains_path(mix).stat().st_mtime_ns
  assert corpora.write_mix(mix, 200_000, 2, 0) == mix
  assert corpora.domains_path(mix).stat().st_mtime_ns == before
  # What the trainer holds out of the text file is what domain_nmi labels.
  config = apply_overrides(AB.base(4), {'data.path': mix, 'batch_size': 4,
                                        'seq_len': 32})
  trained = setup.load_data(config).final_batches
  _, val = split_corpus(written, config.data.val_fraction, config.data.split)
  labelled = eval_batches(val, 4, 32, None)
  assert len(trained) == len(labelled) > 3
  for a, b in zip(trained, labelled):
    np.testing.assert_array_equal(a['inputs'], b['inputs'])
  assert len({int(d) for b in labelled for d in b['domains'].ravel()}) > 1


def test_domain_nmi_by_hand(mix, monkeypatch):
  # Layer 0 sends each domain to its own expert (NMI 1), layer 1 sends
  # everything to expert 0 (NMI 0): the mean over layers is 0.5.
  seen = {}

  def fake_trace(config, workdir, batches):
    seen['batches'], seen['workdir'] = len(batches), workdir
    domain = np.concatenate([b['domains'].ravel() for b in batches])
    expert = np.stack([domain, np.zeros_like(domain)])[..., None]
    return handmade.trace_from_arrays(expert, 8, domain=domain)

  monkeypatch.setattr(trace_lib, 'trace_checkpoint', fake_trace)
  config = apply_overrides(AB.base(4), {
      'data.path': mix, 'batch_size': 4, 'seq_len': 32,
      'train.eval_batches': 3})
  got = derived.DOMAIN_NMI.measure(config, '/some/run')
  assert set(got) == set(derived.DOMAIN_NMI.columns)
  assert seen == {'batches': 3, 'workdir': '/some/run'}
  assert got['domain_nmi'] == pytest.approx(0.5)
  # The floor: layer 0's NMI with the labels shuffled (seed 0), over 2.
  domain = np.concatenate([b['domains'].ravel() for b in eval_batches(
      split_corpus(corpora.read_mix(mix), 0.05)[1], 4, 32, 3)])
  t = handmade.trace_from_arrays(domain[None, :, None], 8, domain=domain)
  floor = routing.expert_label_mi(t, domain)['nmi_shuffled'][0] / 2
  assert 0 < floor < 0.1
  assert got['domain_nmi_floor'] == pytest.approx(floor)
  assert got['neg_domain_nmi'] == pytest.approx(floor - 0.5)


def test_the_summary_has_a_table_of_the_checkpoint_columns(tmp_path):
  rows = [{'variant': v, 'seed': s, 'steps': 4, 'status': 'ok',
           'eval_loss': 1.0 + s, 'domain_nmi': 0.1 * (s + 1),
           'domain_nmi_floor': 0.01, 'neg_domain_nmi': -0.1 * s}
          for v in balance_scope.SCOPES for s in (0, 1)]
  report.write(AB, rows, [], tmp_path)
  text = (tmp_path / 'summary.md').read_text()
  assert '## From the last checkpoints' in text
  assert '| global | 0.15 ± 0.07071' in text.replace('0.1500', '0.15')


def test_eval_sorting_reuses_balance_scopes_runs_config_for_config():
  from experiments import eval_sorting
  from experiments.run_hash import config_hash
  ab = eval_sorting.ABLATION
  for v in ab.variants:
    mine = apply_overrides(ab.base(ab.steps), v.overrides)
    theirs = apply_overrides(AB.base(AB.steps), AB.variant(v.name).overrides)
    assert config_hash(mine) == config_hash(theirs)
  for comp in ab.comparisons:
    assert comp.basis == 'same checkpoint'
    assert comp.better[0] == comp.worse[0]
    assert {comp.better[1], comp.worse[1]} <= set(ab.checkpoint_metrics.columns)


def test_sorted_eval_scores_both_orders_with_batch_wide_groups(mix,
                                                               monkeypatch):
  from moe_jax.analysis import capacity
  calls = []

  def fake_curve(config, workdir, factors, *, dropless, batches, **over):
    calls.append((factors, dropless, len(batches), over))
    assert all('domains' not in b for b in batches)
    loss = 2.0 if len(calls) == 1 else 2.5
    return {'loss': np.array([loss]), 'dropped': np.array([loss / 10]),
            'dropless_loss': 1.9 if dropless else np.nan}

  monkeypatch.setattr(capacity, 'capacity_curve', fake_curve)
  config = apply_overrides(AB.base(4), {
      'data.path': mix, 'batch_size': 4, 'seq_len': 32,
      'train.eval_batches': 3})
  metrics = derived.sorted_eval(1.1)
  got = metrics.measure(config, '/some/run')
  assert set(got) == set(metrics.columns)
  # One call per order, the capacity shared by each batch's 4·32 tokens.
  assert [c[:3] for c in calls] == [((1.1,), False, 3), ((1.1,), True, 3)]
  assert all(c[3] == {'moe__group_size': 128} for c in calls)
  assert got == pytest.approx({
      'eval_loss_sorted_cf1.1': 2.0, 'eval_loss_shuffled_cf1.1': 2.5,
      'eval_dropped_sorted_cf1.1': 0.2, 'eval_dropped_shuffled_cf1.1': 0.25,
      'eval_loss_dropless': 1.9, 'sorted_penalty_cf1.1': -0.5})
