"""The regime pilot's claims in the long regime (experiments/long_regime.py).

  python -m experiments.run regime_long --seeds 6 --jobs 2   # ~3 h on 2 cores

The same variants and claims as experiments/regime.py, 8000 steps on the
pysource corpus: does switch top-1 beat its dense twin at equal active
parameters once each expert has seen millions of tokens?
"""

from __future__ import annotations

from experiments import long_regime, regime
from experiments.ablation import Ablation

ABLATION = Ablation(**long_regime.long_fields(regime.ABLATION, 'regime_long'))
