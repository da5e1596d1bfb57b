#!/usr/bin/env bash
# The round-2 ablations of issue 21, in the short regime (1000 steps, 3
# seeds, paired), cheapest claims first. null_experts, remoe and balancing
# ran on 2026-12-06 (seventh session) and are skipped. Each command
# resumes where it stopped (finished runs are skipped, an interrupted one
# resumes from its checkpoint), so the script can be restarted at any time.
# Run it from a checkout that does not change while it runs (worker
# processes import the code when they start), on 2 cores:
#   bash experiments/rerun_round2.sh
# Estimated cost (experiments/README.md, "Round 2"), from the --quick runs'
# CPU time per step: null_experts 0.39, remoe 0.52, balancing 0.61,
# drop_upcycling 0.90, granularity 0.82, balance_scope 0.4 core-hours and
# eval_sorting 0.1 (evaluation only); about 3.7 in all. eval_sorting
# re-evaluates balance_scope's checkpoints, so it comes after it.
set -euo pipefail
cd "$(dirname "$0")/.."
P=${PYTHON:-python}
run() { $P -m experiments.run "$@" --jobs 2; }

run null_experts
run remoe
run balancing
run drop_upcycling
run granularity
run balance_scope
run eval_sorting
