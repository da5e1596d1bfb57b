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

run regime --seeds 5
run regime --variants dense,switch_top1 --seeds 5 --data-seed 0 \
  --out experiments/results/seed_sources_init
run regime --variants dense,switch_top1 --seeds 5 --init-seed 0 \
  --out experiments/results/seed_sources_data
# The other-text check (issue 24): the short regime's claims on a corpus that
# is not code. Tests and this check may read ../shared; nothing else needs it.
run regime --seeds 5 --config.data.kind=text \
  --config.data.path=../shared/data/tinyshakespeare.txt \
  --out experiments/results/regime_shakespeare
# The short top-1 vs top-2 ablation next: its claims were 0.05 apart in the
# pilot, so it can decide them in about 1.5 core-hours.
run top1_vs_top2
# The long regime (about 8 core-hours): it resumes from its checkpoints.
run regime_long --seeds 6
# The six older ablations in the short regime next (about 2 hours of the
# machine; most of their verdicts were inconclusive), then the long
# top-1 vs top-2 runs (about 9 core-hours for the cf 1.25 and FLOP-matched
# variants; dense is copied from regime_long). The fifth session moved the
# short reruns ahead of the long top-1 vs top-2 runs.
for ablation in capacity aux_weight z_loss num_experts routing_schemes \
    upcycling; do
  run "$ablation"
done
run top1_vs_top2_long --seeds 6 \
  --variants top1_cf1.25,top2_cf1.25,top2_halfwidth_cf1.25
run top1_vs_top2_long --seeds 6
run regime_scan --seeds 1
