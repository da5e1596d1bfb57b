"""Lines the experiment reports compute: the verdict tally under
experiments/README.md's table (experiments/overview.py) and the regime scan's
outcome (experiments/regime_scan.py)."""

from experiments import overview


def test_tally_counts_all_claims_then_the_shared_ones_then_and_now():
  now = ['agrees', 'inconclusive', 'disagrees', 'agrees']
  before = ['inconclusive', None, 'disagrees', 'inconclusive']
  # Shared: claims 0, 2, 3. Then: inconclusive, disagrees, inconclusive;
  # now: agrees, disagrees, agrees.
  assert overview.tally(now, before) == (
      'Verdicts of the 4 claims: 2 agree, 1 disagree, 1 inconclusive. Of the '
      '3 that also have runs from before 2026-12: then 0 agree, 1 disagree, '
      '2 inconclusive; now 2 agree, 1 disagree, 0 inconclusive.')


def test_tally_with_no_earlier_runs():
  assert overview.tally(['inconclusive'], [None]) == (
      'Verdicts of the 1 claims: 0 agree, 0 disagree, 1 inconclusive. Of the '
      '0 that also have runs from before 2026-12: then 0 agree, 0 disagree, '
      '0 inconclusive; now 0 agree, 0 disagree, 0 inconclusive.')


def test_tally_names_the_claims_that_wait_for_runs():
  assert overview.tally(['agrees'], [None], waiting=2).endswith(
      'now 0 agree, 0 disagree, 0 inconclusive. 2 more claims wait for runs '
      'of their variants and are not in the table.')


def test_table_leaves_out_claims_whose_variants_have_no_runs(monkeypatch):
  # A partly run ablation (the long top-1 vs top-2 ran 3 of its 8 variants
  # first): its claims on unrun variants have nothing measured, so they are
  # neither rows nor inconclusive verdicts in the tally.
  from experiments import ablation, run, run_store
  ab = ablation.Ablation(
      name='partial', title='t', source='s', base=None,
      variants=(ablation.Variant('a', {}), ablation.Variant('b', {}),
                ablation.Variant('c', {})),
      comparisons=(ablation.Comparison('a beats b', ('a', 'eval_loss'),
                                       ('b', 'eval_loss'), 'equal steps'),
                   ablation.Comparison('a beats c', ('a', 'eval_loss'),
                                       ('c', 'eval_loss'), 'equal steps')),
      steps=10, quick_steps=2)
  rows = [{'variant': v, 'seed': str(s), 'status': 'ok',
           'eval_loss': str(x + 0.01 * s)}
          for s in range(3) for v, x in (('a', 1.0), ('b', 1.1 + 0.001 * s))]

  class Store:
    def __init__(self, folder):
      self.archived = 'results_2026-11' in str(folder)
    def rows(self):
      return [] if self.archived else rows
    def curves(self):
      return []

  monkeypatch.setattr(run, 'available', lambda: ['partial'])
  monkeypatch.setattr(run, 'load_ablation', lambda name: ab)
  monkeypatch.setattr(run_store, 'RunStore', Store)
  lines = overview.table()
  body = [l for l in lines[2:] if l.startswith('| [partial]')]
  assert len(body) == 1 and '| a beats b (s) |' in body[0]
  assert '**agrees**' in body[0]
  assert lines[-1] == (
      'Verdicts of the 1 claims: 1 agree, 0 disagree, 0 inconclusive. Of the '
      '0 that also have runs from before 2026-12: then 0 agree, 0 disagree, '
      '0 inconclusive; now 0 agree, 0 disagree, 0 inconclusive. 1 more claims '
      'wait for runs of their variants and are not in the table.')


def test_equal_time_reads_each_curve_at_the_faster_runs_training_time():
  # Hand case: 'fast' trains 100 steps in 50 CPU s, 'slow' in 100 s. At
  # equal time (50 s) 'slow' is at step 50, halfway between its evaluations
  # at steps 0 (3.0) and 100 (2.0): 2.5; 'fast' is at its end: 2.2.
  from experiments import ablation, judge
  rows = [{'variant': 'fast', 'seed': '0', 'steps': '100',
           'train_cpu_s': '50', 'eval_loss': '2.2'},
          {'variant': 'slow', 'seed': '0', 'steps': '100',
           'train_cpu_s': '100', 'eval_loss': '2.0'},
          # A third variant without CPU time (reused from older runs) and
          # wall times that say the opposite: the pair still reads CPU time.
          {'variant': 'dense', 'seed': '0', 'steps': '100', 'train_s': '9',
           'train_cpu_s': '', 'eval_loss': '2.4'}]
  rows[0]['train_s'], rows[1]['train_s'] = '100', '50'
  curves = [{'variant': v, 'seed': '0', 'step': str(step),
             'metric': 'eval_loss', 'value': str(x)}
            for v, pts in (('fast', ((0, 3.0), (100, 2.2))),
                           ('slow', ((0, 3.0), (100, 2.0))))
            for step, x in pts]
  comp = ablation.Comparison('fast beats slow in equal time',
                             ('fast', 'eval_loss'), ('slow', 'eval_loss'),
                             'equal time')
  a, b = judge.at_equal_time(curves, rows, comp, [0])
  assert a == [2.2] and b == [2.5]


def test_regime_scan_outcome_applies_the_rule_to_the_falls():
  from experiments import regime_scan
  assert regime_scan.outcome([32, 48, 64], [0.8, 0.9, 1.2]) == (
      'Outcome: D = 48 is the largest width within the 1% rule.')
  assert regime_scan.outcome([32, 48, 64], [16.3, 15.59, 16.86]) == (
      'Outcome: no width meets the 1% rule (falls 15.6% to 16.9% per '
      'doubling); the fallback picks D = 48, the smallest fall.')
