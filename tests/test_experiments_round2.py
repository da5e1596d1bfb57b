"""The round-2 ablations (issue 21): definitions, sources, what their variants
hold equal, and the columns they derive from the logged curves.

Nothing here trains: each check builds configs or abstract parameter shapes.
"""

import math
import pathlib
import re

import pytest
from flax import traverse_util

from experiments import (balance_scope, balancing, derived, drop_upcycling,
                         granularity, judge, null_experts, remoe, run,
                         upcycling)
from experiments.ablation import Ablation, Comparison, Variant, apply_overrides
from moe_jax.models import accounting
from moe_jax.train import setup

ROUND2 = (balancing, remoe, null_experts, granularity, drop_upcycling,
          balance_scope)
MESH = accounting.parse_mesh('')


def _flat(ab, variant):
  config = apply_overrides(ab.base(ab.steps), ab.variant(variant).overrides)
  return traverse_util.flatten_dict(config.to_dict(), sep='.')


def _differ(ab, a, b) -> set:
  fa, fb = _flat(ab, a), _flat(ab, b)
  return {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}


def _cost(ab, variant):
  config = apply_overrides(ab.base(ab.steps), ab.variant(variant).overrides)
  return setup.model_config(config), accounting.model_cost(
      setup.model_config(config), MESH)


@pytest.mark.parametrize('module', ROUND2, ids=lambda m: m.__name__)
def test_round2_ablations_are_runnable_and_state_their_sources(module):
  ab = module.ABLATION
  assert ab.name in run.available() and run.load_ablation(ab.name) is ab
  assert ab.steps == 1000 and ab.quick_steps == 60  # The short regime.
  assert ab.comparisons and ab.source
  doc = module.__doc__
  assert 'Source' in doc and re.search(r'arXiv \d{4}\.\d{5}', doc)
  for comp in ab.comparisons:
    # Each claim opens with who made it, and that source is named.
    who = comp.claim.split(':')[0]
    names = [w for w in re.findall(r'[A-Z][\w+]+', who) if w not in ('G',)]
    assert names and all(n in ab.source for n in names), comp.claim
    for side, column in (comp.better, comp.worse):
      ab.variant(side)
      measured = ab.checkpoint_metrics.columns if ab.checkpoint_metrics else ()
      assert column.startswith('eval_') or column in ab.derived or column in (
          'train_cpu_s', *measured), column


def test_balancing_variants_differ_only_in_how_they_balance():
  ab = balancing.ABLATION
  sigmoid = 'moe.router_options.sigmoid.'
  assert _differ(ab, 'aux', 'sign') == {
      'moe.load_balance_weight', sigmoid + 'bias_update_rate'}
  assert _differ(ab, 'sign', 'quantile') == {
      sigmoid + 'bias_update_rate', sigmoid + 'bias_update'}
  flat = _flat(ab, 'aux')
  assert flat['train.log_every'] == 1 and flat['moe.top_k'] == 2


def test_remoe_matches_the_average_k_and_drops_nothing():
  ab = remoe.ABLATION
  assert _differ(ab, 'topk', 'remoe') == {'moe.router',
                                          'moe.load_balance_weight'}
  for v in ('topk', 'remoe'):
    mcfg, _ = _cost(ab, v)
    # The ReLU router's target k is top_k: one expert per token, as top-1.
    assert mcfg.moe.top_k == 1 and mcfg.moe.capacity(128, True) is None


def test_null_experts_hold_the_real_expert_flops_and_capacity():
  ab = null_experts.ABLATION
  assert _differ(ab, 'top2', 'top4_null8') == {'moe.top_k',
                                               'moe.num_null_experts'}
  (m2, c2), (mn, cn) = _cost(ab, 'top2'), _cost(ab, 'top4_null8')
  assert m2.moe.expert_passes_per_token(128) == 2
  assert mn.moe.expert_passes_per_token(128) == 4 * 8 / 16
  assert m2.moe.capacity(128, True) == mn.moe.capacity(128, True) == 40
  # Active parameters differ only by the 8 null columns of each MoE layer's
  # router (D = 48, 2 MoE layers); expert parameters are the same.
  router_growth = 2 * 48 * 8
  assert cn.active - c2.active == cn.total - c2.total == router_growth
  assert cn.train_flops_per_token - c2.train_flops_per_token == (
      6 * router_growth)  # 6 FLOPs per active parameter and token.


def test_granularity_holds_active_and_total_expert_params():
  ab = granularity.ABLATION
  costs = {g: _cost(ab, f'g{g}') for g in granularity.GRANULARITIES}
  m1, c1 = costs[1]
  for g, (m, c) in costs.items():
    assert _differ(ab, 'g1', f'g{g}') <= {'moe.num_experts', 'moe.top_k',
                                          'moe.d_ff'}
    assert (m.moe.num_experts, m.moe.top_k, m.moe.d_ff) == (8 * g, g, 192 // g)
    assert m.moe.num_shared_experts == 0
    # Only the router grows: D·8·(G − 1) weights in each of 2 MoE layers.
    growth = 2 * 48 * 8 * (g - 1)
    assert c.total - c1.total == c.active - c1.active == growth, g
    assert m.moe.capacity(128, True) == m1.moe.capacity(128, True) == 20
  # G = 1 is the regime's switch gate: top-1 probability, no renormalising.
  assert not m1.moe.router_options.renormalize


def test_drop_upcycling_varies_only_r_and_naive_is_the_upcycling_run():
  ab = drop_upcycling.ABLATION
  assert ab.init_run.overrides == upcycling.ABLATION.init_run.overrides
  assert _differ(ab, 'r0', 'r0.5') == _differ(ab, 'r0', 'r1') == {
      'train.upcycle_drop_fraction'}
  assert _flat(ab, 'r1')['train.upcycle_drop_fraction'] == 1.0
  # r = 0 is the upcycling ablation's upcycled run, config for config, so
  # the runner can reuse a finished one.
  assert _flat(ab, 'r0') == _flat(upcycling.ABLATION, 'upcycled')


def test_rerun_script_runs_every_round2_ablation_at_3_or_more_seeds():
  script = pathlib.Path(run.__file__).with_name('rerun_round2.sh').read_text()
  for module in ROUND2:
    line = next(l for l in script.splitlines()
                if re.match(rf'\s*run {module.ABLATION.name}\b', l))
    seeds = re.search(r'--seeds (\d+)', line)
    assert seeds is None or int(seeds.group(1)) >= 3, line


# ------------------------------------------------- columns from the curves --

def _points(metric, values, start=1):
  return [dict(variant='a', seed=0, step=s, metric=metric, value=v)
          for s, v in enumerate(values, start)]


def test_derived_columns_by_hand():
  row = {'variant': 'a', 'seed': 0, 'steps': 6}
  # MaxVio at steps 1..6; the second half is steps 4, 5, 6.
  points = _points('max_violation', [9.0, 9.0, 9.0, 0.2, 0.6, 0.2])
  assert derived.late_mean('max_violation')(row, points) == pytest.approx(
      1.0 / 3)
  # |0.6 − 0.2| twice: 0.4; a steady curve scores 0.
  assert derived.step_volatility('max_violation')(row, points) == (
      pytest.approx(0.4))
  steady = _points('max_violation', [1.0] * 6)
  assert derived.step_volatility('max_violation')(row, steady) == 0
  assert math.isnan(derived.late_mean('max_violation')(row, []))
  # A run that never logs the metric (top-2's experts per token) may stand
  # for a known value.
  assert derived.late_mean('experts_per_token_mean', unlogged=2.0)(
      row, points) == 2.0
  # Validation points at steps 2, 4, 6: the one nearest 6/8 is step 2.
  evals = [dict(step=s, metric='eval_loss', value=v)
           for s, v in ((6, 1.5), (2, 2.5), (4, 2.0))]
  assert derived.at_fraction('eval_loss', 1 / 8)(row, evals) == 2.5
  # 2 CPU s for 1000 tokens (tokens/s × train_s): 2000 µs per token.
  timed = {'tokens_per_sec': 500.0, 'train_s': 2.0, 'train_cpu_s': 2.0}
  assert derived.cpu_us_per_token(timed, []) == pytest.approx(2000)
  assert math.isnan(derived.cpu_us_per_token({}, []))


def test_a_claim_on_a_derived_column_gets_a_paired_verdict():
  # Variant a's MaxVio alternates 0.1 / 0.3 (volatility 0.2), b's 0.1 / 0.9
  # (0.8), at three seeds: a jitters less at every seed.
  ab = Ablation(
      name='x', title='', source='s', base=lambda n: None,
      variants=(Variant('a', {}), Variant('b', {})),
      comparisons=(Comparison('a jitters less', ('a', 'jitter'),
                              ('b', 'jitter'), 'equal steps'),),
      steps=4, quick_steps=4,
      derived={'jitter': derived.step_volatility('max_violation', 0.0)})
  rows, curves = [], []
  for seed in range(3):
    for variant, high in (('a', 0.3 + 0.01 * seed), ('b', 0.9)):
      rows.append({'variant': variant, 'seed': seed, 'steps': 4})
      curves += [dict(variant=variant, seed=seed, step=s,
                      metric='max_violation', value=v)
                 for s, v in enumerate([0.1, high, 0.1, high], 1)]
  (j,) = judge.verdicts(ab, rows, curves)
  assert j.verdict.verdict == 'agrees' and j.seeds == [0, 1, 2]
  assert j.better == pytest.approx([0.2, 0.21, 0.22])
  assert 'jitter' not in rows[0]  # The caller's rows are left as they were.


def test_quick_runs_end_with_a_short_final_evaluation():
  got = run.quick_overrides(60)
  assert got == {'train.eval_batches': 4, 'train.eval_every': 30,
                 'train.final_eval_batches': run.QUICK_FINAL_EVAL_BATCHES}
  assert run.QUICK_FINAL_EVAL_BATCHES == 16 and run.quick_overrides(1)[
      'train.eval_every'] == 1
