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
run regime_long --seeds 6
run top1_vs_top2_long --seeds 6
for ablation in top1_vs_top2 capacity aux_weight z_loss num_experts \
    routing_schemes upcycling; do
  run "$ablation"
done
run regime_scan --seeds 1
