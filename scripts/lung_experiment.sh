#!/usr/bin/env bash
# The README's experiment on the Shenzhen lung X-rays at 128x128 on the CPU: supervised,
# mean-teacher pseudo-labels and refmatch with NUM_LABELED labelled images, and full
# supervision; same model and steps; then their table, and one across the seeds finished so far.
# A run folder that exists is resumed with the same settings: a stopped run goes on, a finished
# one keeps its result, and one trained with other settings (an earlier config) stops the
# script, naming them.
# Usage: [TASK=sides] [NORM=batch] bash scripts/lung_experiment.sh [SEED] [NUM_LABELED] [REFMATCH_OVERRIDES...]
#   e.g. bash scripts/lung_experiment.sh 0 6 pl_mode=soft tap_size=32 pl_consensus=false pl_k=8
#   (the soft top-8 vote: runs/lung_seed0/refmatch_n6_pl_mode-soft_tap_size-32_pl_consensus-false_pl_k-8)
#   NORM=batch trains all four with BatchNorm, as the earlier tables (docs/experiments.md) ran,
#   in runs/lung_batchnorm_seedSEED; the config's instance norm writes runs/lung_seedSEED.
#   TASK=sides: right and left lung as two classes (configs/lung_sides_cpu.yaml; its data comes
#   from python scripts/split_lungs.py), in runs/lung_sides_seedSEED (_batchnorm as above).
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-0}
labeled=${2:-28}
shift $(( $# < 2 ? $# : 2 ))
task=${TASK:-lung}
case $task in
  lung) config=configs/lung_cpu.yaml; prefix=runs/lung ;;
  sides) config=configs/lung_sides_cpu.yaml; prefix=runs/lung_sides ;;
  *) echo "TASK=$task: use lung or sides" >&2; exit 2 ;;
esac
norm=${NORM:-instance}
case $norm in
  instance) out=${prefix}_seed$seed ;;
  batch) out=${prefix}_batchnorm_seed$seed ;;
  *) echo "NORM=$norm: use instance or batch" >&2; exit 2 ;;
esac
tag=$([[ $labeled == 28 ]] && echo 5pct || echo "n$labeled")  # 28 labelled images are 5 % of 566
variant=$(printf '_%s' "$@" | tr '=' '-')
[[ $# -gt 0 ]] || variant=""
run() {
  local resume=()
  [[ -f "$1/latest.pt" || -f "$1/best.pt" ]] && resume=(--resume)  # best.pt alone: killed at its first save
  refmatch train --config $config seed=$seed norm=$norm ${resume[@]+"${resume[@]}"} --out "$@"  # bash 3.2 too
}
run $out/supervised_$tag method=supervised num_labeled=$labeled
run $out/meanteacher_$tag method=meanteacher-pl num_labeled=$labeled
run $out/refmatch_$tag$variant method=refmatch num_labeled=$labeled "$@"
run $out/supervised_100pct method=supervised num_labeled=0 labeled_fraction=1.0
names=(supervised_$tag meanteacher_$tag refmatch_$tag$variant supervised_100pct)
refmatch report "${names[@]/#/$out/}"
# The same runs of every seed finished so far, a column per seed (docs/experiments.md's tables)
finished=()
for name in "${names[@]}"; do
  for metrics in "${out%$seed}"*/$name/metrics.json; do
    [[ -f $metrics ]] && finished+=("${metrics%/metrics.json}")
  done
done
if [[ ${#finished[@]} -gt 0 ]]; then
  refmatch report --by-seed "${finished[@]}"
fi
