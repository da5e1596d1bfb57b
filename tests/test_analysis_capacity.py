"""The capacity counterfactual and checkpoint tracing on a tiny trained run."""

import importlib.util
import pathlib

import numpy as np
import pytest

from moe_jax.analysis import capacity
from moe_jax.analysis.trace import trace_checkpoint
from moe_jax.train import trainer

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module', autouse=True)
def _cache(compilation_cache_on):
  del compilation_cache_on


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  spec = importlib.util.spec_from_file_location(
      '_cfg_switch', REPO / 'configs' / 'switch_top1.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config('tiny')
  config.data.kind = 'synthetic'  # Labelled, so traces carry domains.
  config.data.max_bytes = 50_000
  workdir = tmp_path_factory.mktemp('switch')
  trainer.train_and_evaluate(config, str(workdir))
  return config, str(workdir)


def test_capacity_curve(run):
  config, workdir = run
  curve = capacity.capacity_curve(config, workdir, factors=(0.25, 4.0),
                                  moe__min_capacity=1)
  np.testing.assert_array_equal(curve['factors'], [0.25, 4.0])
  # S = 32 tokens over E = 8 experts: cf 0.25 gives C = 1, which must drop;
  # cf 4.0 gives C = 16 (half the group) and drops no more than that.
  assert curve['dropped'][0] > 0.5
  assert curve['dropped'][1] <= curve['dropped'][0]
  assert np.all(np.isfinite(curve['loss'])) and np.isfinite(
      curve['dropless_loss'])
  if curve['dropped'][1] == 0:  # Nothing dropped: the same computation.
    assert curve['loss'][1] == pytest.approx(curve['dropless_loss'], abs=1e-4)
  assert curve['train_capacity_factor'] == 1.25


def test_trace_checkpoint_matches_the_eval_drops(run):
  config, workdir = run
  trace = trace_checkpoint(config, workdir, moe__eval_capacity_factor=0.25,
                           moe__min_capacity=1)
  curve = capacity.capacity_curve(config, workdir, factors=(0.25,),
                                  dropless=False, moe__min_capacity=1)
  # The trace covers the same validation batches the eval averages over.
  np.testing.assert_allclose(trace.dropped.mean(), curve['dropped'][0],
                             rtol=1e-5)
  assert trace.has_domains and trace.meta['capacity'] == 1
  assert trace.meta['eval_capacity_factor'] == 0.25


def test_domain_ordered_batches_by_hand():
  from moe_jax.data.corpus import Corpus
  # 8 windows of L = 4 (the last needs one byte more, so 9·4 + 1 bytes):
  # majority domains 0 1 0 1 2 2 1 0; window 2 is split 2:2 between
  # domains 1 and 0, and the tie goes to the lower domain.
  domains = np.repeat([0, 1, 0, 1, 2, 2, 1, 0, 0], 4)
  domains[8:10] = 1
  corpus = Corpus(np.arange(37, dtype=np.uint8) % 251,
                  np.append(domains, 0).astype(np.int32), 'hand')
  got = capacity.domain_ordered_batches(corpus, 2, 4, seed=0)
  sorted_starts = [b['inputs'][:, 0] for b in got['sorted']]
  # Stable by majority domain: 0 (windows 0, 2, 7), 1 (1, 3, 6), 2 (4, 5).
  np.testing.assert_array_equal(np.concatenate(sorted_starts),
                                4 * np.array([0, 2, 7, 1, 3, 6, 4, 5]))
  shuffled = np.concatenate([b['inputs'][:, 0] for b in got['shuffled']])
  assert sorted(shuffled) == sorted(np.concatenate(sorted_starts))
  assert list(shuffled) != list(np.concatenate(sorted_starts))
  assert all(b['inputs'].shape == (2, 4) for b in got['sorted'])
  # max_batches keeps windows spread over the split: 2 batches of 2.
  assert len(capacity.domain_ordered_batches(corpus, 2, 4, 2)['sorted']) == 2


def test_batch_order_matters_when_groups_span_sequences(run):
  # (With the default one sequence per group each window routes alone,
  # whatever batch it is in, so only a batch-wide group can tell the orders
  # apart; two evaluations keep this test short.)
  from moe_jax.data.split import split_corpus
  from moe_jax.train import setup
  from moe_jax.train.evaluate import evaluate_checkpoint
  config, workdir = run
  val = split_corpus(setup.load_data(config).corpus, config.data.val_fraction,
                     config.data.split)[1]
  orders = capacity.domain_ordered_batches(val, config.batch_size,
                                           config.seq_len, 6)
  # One group per batch (an eval-only override): the batch's windows share
  # the capacity, and the two orders drop different tokens.
  got = {order: evaluate_checkpoint(
      config, workdir, batches=batches, moe__eval_capacity_factor=0.5,
      moe__min_capacity=1,
      moe__group_size=config.batch_size * config.seq_len)
         for order, batches in orders.items()}
  assert (got['sorted']['eval/dropped_fraction'] !=
          got['shuffled']['eval/dropped_fraction'])
  assert all(0 < r['eval/dropped_fraction'] < 1 for r in got.values())
