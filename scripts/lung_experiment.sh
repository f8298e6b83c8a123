#!/usr/bin/env bash
# The README's experiment: 4 runs on the Shenzhen lung X-rays at 128x128 on the CPU,
# same model and steps; then one table. Usage: bash scripts/lung_experiment.sh [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-0}
out=runs/lung_seed$seed
run() { [[ -f "$1/metrics.json" ]] || refmatch train --config configs/lung_cpu.yaml seed=$seed --out "$@"; }
run $out/supervised_5pct method=supervised
run $out/meanteacher_5pct method=meanteacher-pl
run $out/refmatch_5pct method=refmatch
run $out/supervised_100pct method=supervised num_labeled=0 labeled_fraction=1.0
python -m refmatch.recipes.report $out/supervised_5pct $out/meanteacher_5pct $out/refmatch_5pct $out/supervised_100pct
