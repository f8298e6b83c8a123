#!/usr/bin/env bash
# The README's experiment: 4 runs on the Shenzhen lung X-rays at 128x128 on the CPU,
# same model and steps; then one table. Usage: bash scripts/lung_experiment.sh [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-0}
out=runs/lung_seed$seed
refmatch train --config configs/lung_cpu.yaml method=supervised seed=$seed --out $out/supervised_5pct
refmatch train --config configs/lung_cpu.yaml method=meanteacher-pl seed=$seed --out $out/meanteacher_5pct
refmatch train --config configs/lung_cpu.yaml method=refmatch seed=$seed --out $out/refmatch_5pct
refmatch train --config configs/lung_cpu.yaml method=supervised num_labeled=0 labeled_fraction=1.0 seed=$seed \
  --out $out/supervised_100pct
python -m refmatch.recipes.report $out/supervised_5pct $out/meanteacher_5pct $out/refmatch_5pct $out/supervised_100pct
