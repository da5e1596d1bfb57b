"""top1_vs_top2's claims in the long regime (experiments/long_regime.py).

  python -m experiments.run top1_vs_top2_long --seeds 6 --jobs 2  # ~9 h

The same variants and claims as experiments/top1_vs_top2.py, 8000 steps on
the pysource corpus.
"""

from __future__ import annotations

from experiments import long_regime, top1_vs_top2
from experiments.ablation import Ablation

ABLATION = Ablation(
    name='top1_vs_top2_long',
    title=top1_vs_top2.ABLATION.title + ', long regime',
    source=top1_vs_top2.ABLATION.source,
    base=long_regime.long_base,
    variants=top1_vs_top2.ABLATION.variants,
    comparisons=top1_vs_top2.ABLATION.comparisons,
    steps=long_regime.LONG_STEPS,
    quick_steps=60,
    notes=long_regime.NOTE + ' ' + top1_vs_top2.ABLATION.notes,
    plot=top1_vs_top2.ABLATION.plot,
)
