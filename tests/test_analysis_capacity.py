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
