"""The long regime: the headline claims at a length where experts see millions.

The rule, written down on 2026-12-05 before any long run (issue 24):
  1. Keep everything of the short regime (experiments/regime_config.py:
     D = 48, 4 layers, E = 8 in every second FFN, B = 16 × L = 128, the
     optimiser and its schedule) except the length and the corpus, so that
     a change in a verdict can only come from training longer.
  2. Length: the smallest N, a multiple of 1000 steps, at which each expert
     of the 8-expert top-1 model sees at least 2M tokens on average
     (N·B·L / E ≥ 2·10⁶, so N = 8000: 2.05M each). The public small-scale
     results where MoE clearly beats its active-matched dense twin (nanoMoE,
     ReMoE; ../shared/docs/MOE_REFERENCE.md) had every expert see millions
     of tokens; the short regime gives each 256k.
  3. Corpus: no byte read twice, as in the short regime. A run reads 16.4M
     bytes, more than the 10.8M training bytes of the whole stdlib, so the
     corpus is 'pysource' (the stdlib plus the sources of the packages that
     requirements.txt pins: 61.6 MB, deterministic given requirements.txt),
     with 1% of it held out as whole files (64 files, 616 KB, evaluated whole
     at the end).
  4. Seeds: 6 per variant, all variants at the same seeds. No length or
     seed count is changed after looking at the results: if switch − dense
     does not resolve, the summary's minimum detectable effect and "seeds
     for 0.01" say what it would take.
  5. Budget: with two single-threaded runs at a time (--jobs 2), an 8000-step
     run of this model takes about 21 minutes of one core (8 × the regime's
     1000-step runs), so the regime (3 variants) and top1_vs_top2 (8
     variants) at 6 seeds, 66 runs, take about 12 hours of the 2-core
     machine, the budget the issue allows. num_experts (36 runs) and
     capacity (30 runs) would take about 12 hours more; they wait until
     these two are done.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from experiments import regime_config
from experiments.ablation import Ablation, apply_overrides

LONG_STEPS = 8000
CORPUS = {'data.kind': 'pysource', 'data.val_fraction': 0.01}
NOTE = ('Long regime (experiments/long_regime.py): the short regime\'s model, '
        f'{LONG_STEPS} steps on the pysource corpus (the stdlib and the pinned '
        'packages\' sources), 1% of its files held out.')


def long_base(num_steps: int) -> ml_collections.ConfigDict:
  """The short regime's switch_top1 on pysource, for `num_steps` steps."""
  return apply_overrides(regime_config.regime_base(num_steps), CORPUS)


def long_fields(ab: Ablation, name: str) -> dict:
  """The fields of `ab` in the long regime: the same variants and claims,
  long_base's config, LONG_STEPS steps."""
  return {**{f.name: getattr(ab, f.name) for f in dataclasses.fields(ab)},
          'name': name, 'title': ab.title + ', long regime',
          'base': long_base, 'steps': LONG_STEPS, 'quick_steps': 60,
          'notes': NOTE + ' ' + ab.notes}
