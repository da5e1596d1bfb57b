#!/usr/bin/env bash
# Every ablation rerun with the validation split of 2026-12 (held-out whole
# files; experiments/results_2026-11/README.md says what changed), in the
# order issue 24 asks for: the pilot and its seed sources first, then the
# long regime's headline claims, then the short-regime reruns. Each command
# resumes where it stopped (finished runs are skipped), so the script can be
# restarted at any time. Run it from a checkout that does not change while it
# runs (worker processes import the code when they start), on 2 cores:
#   bash experiments/rerun_2026-12.sh
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PYTHON:-python}
run() { $P -m experiments.run "$@" --jobs 2; }
# The steps up to the long regime ran before runs were pinned to one CPU
# each (experiments/scheduler.py, 2026-12-06): they resume unpinned, as made.
old() { run "$@" --unpinned; }

old regime --seeds 5
old regime --variants dense,switch_top1 --seeds 5 --data-seed 0 \
  --out experiments/results/seed_sources_init
old regime --variants dense,switch_top1 --seeds 5 --init-seed 0 \
  --out experiments/results/seed_sources_data
# The other-text check (issue 24): the short regime's claims on a corpus that
# is not code. Tests and this check may read ../shared; nothing else needs it.
old regime --seeds 5 --config.data.kind=text \
  --config.data.path=../shared/data/tinyshakespeare.txt \
  --out experiments/results/regime_shakespeare
# The short top-1 vs top-2 ablation next: its claims were 0.05 apart in the
# pilot, so it can decide them in about 1.5 core-hours.
old top1_vs_top2
# The long regime (about 8 core-hours): it resumes from its checkpoints.
old regime_long --seeds 6
# From here on every run is pinned to one CPU (sixth session). First the
# other-text check of the top-1 vs top-2 claims decided on code (issue 24's
# "done when"): 24 short runs, about half an hour of the machine.
run top1_vs_top2 --config.data.kind=text \
  --config.data.path=../shared/data/tinyshakespeare.txt \
  --out experiments/results/top1_vs_top2_shakespeare
# The six older ablations in the short regime next (about 2 hours of the
# machine; most of their verdicts were inconclusive), then the long
# top-1 vs top-2 runs (about 9 core-hours for the cf 1.25 and FLOP-matched
# variants). The fifth session moved the short reruns ahead of the long
# top-1 vs top-2 runs; the seventh ran them and regime_scan. Being pinned,
# top1_vs_top2_long retrains its dense runs instead of copying regime_long's
# unpinned ones.
for ablation in capacity aux_weight z_loss num_experts routing_schemes \
    upcycling; do
  run "$ablation"
done
run top1_vs_top2_long --seeds 6 \
  --variants top1_cf1.25,top2_cf1.25,top2_halfwidth_cf1.25
run top1_vs_top2_long --seeds 6
run regime_scan --seeds 1
