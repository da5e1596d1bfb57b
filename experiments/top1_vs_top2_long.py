"""top1_vs_top2's claims in the long regime (experiments/long_regime.py).

  python -m experiments.run top1_vs_top2_long --seeds 6 --jobs 2  # ~9 h

The same variants and claims as experiments/top1_vs_top2.py, 8000 steps on
the pysource corpus.
"""

from __future__ import annotations

from experiments import long_regime, top1_vs_top2
from experiments.ablation import Ablation

ABLATION = Ablation(**long_regime.long_fields(top1_vs_top2.ABLATION,
                                              'top1_vs_top2_long'))
