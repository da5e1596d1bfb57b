"""Paper ablations: one file per ablation, run by `python -m experiments.run`."""
