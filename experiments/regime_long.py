"""The regime pilot's claims in the long regime (experiments/long_regime.py).

  python -m experiments.run regime_long --seeds 6 --jobs 2   # ~2 h on 2 cores

The same variants and claims as experiments/regime.py, 8000 steps on the
pysource corpus: does switch top-1 beat its dense twin at equal active
parameters once each expert has seen millions of tokens?
"""

from __future__ import annotations

from experiments import long_regime, regime
from experiments.ablation import Ablation

ABLATION = Ablation(
    name='regime_long',
    title=regime.ABLATION.title + ', long regime',
    source=regime.ABLATION.source,
    base=long_regime.long_base,
    variants=regime.ABLATION.variants,
    comparisons=regime.ABLATION.comparisons,
    steps=long_regime.LONG_STEPS,
    quick_steps=60,
    notes=long_regime.NOTE + ' ' + regime.ABLATION.notes,
)
