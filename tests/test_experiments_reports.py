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


def test_regime_scan_outcome_applies_the_rule_to_the_falls():
  from experiments import regime_scan
  assert regime_scan.outcome([32, 48, 64], [0.8, 0.9, 1.2]) == (
      'Outcome: D = 48 is the largest width within the 1% rule.')
  assert regime_scan.outcome([32, 48, 64], [16.3, 15.59, 16.86]) == (
      'Outcome: no width meets the 1% rule (falls 15.6% to 16.9% per '
      'doubling); the fallback picks D = 48, the smallest fall.')
