#!/usr/bin/env bash
# Variant x total-charge x seed table of one charged-systems set (experiments/README.md,
# "Charged systems").  One run per line; a finished run (metrics.json) is skipped, one
# with checkpoints is resumed, others are started, so the script can be re-run after an
# interruption.  Run from the repository root:
#
#   OUT=runs/charged bash experiments/charged_table.sh dimers     # or nacl, carbon_chain
#   python experiments/dimers/collect.py "$OUT/dimers" --set dimers --json "$OUT/dimers/tables.json"
#
# Variables: OUT (output root, default runs/charged), POLMP (the polmp command, default
# "python -m polmp.cli.main"), EXTRA (more dotted overrides for every run).
set -euo pipefail
SET=${1:?usage: charged_table.sh dimers|nacl|carbon_chain}
case "$SET" in
  dimers) CONFIG=experiments/dimers/charged.yaml ;;
  nacl) CONFIG=experiments/nacl/nacl.yaml ;;
  carbon_chain) CONFIG=experiments/carbon_chain/charged.yaml ;;
  *) echo "unknown set $SET (dimers, nacl, carbon_chain)" >&2; exit 2 ;;
esac
OUT=${OUT:-runs/charged}
DIR="$OUT/$SET"
POLMP=${POLMP:-python -m polmp.cli.main}
EXTRA=${EXTRA:-}

run() {
  local name=$1; shift
  local dir="$DIR/$name"
  if [[ -f "$dir/metrics.json" ]]; then echo "done: $dir"; return; fi
  local resume=()
  if [[ -d "$dir/checkpoints" ]] && [[ -n "$(ls -A "$dir/checkpoints" 2>/dev/null)" ]]; then
    resume=(--resume)
  fi
  # shellcheck disable=SC2086
  $POLMP train "$CONFIG" "${resume[@]}" output_dir="$dir" "$@" $EXTRA
}

for seed in 0 1 2; do
run sr_s$seed                     model.variant=sr           model.total_charge_shift=none    training.seed=$seed
run q_none_s$seed                 model.variant=q            model.total_charge_shift=none    training.seed=$seed
run q_uniform_s$seed              model.variant=q            model.total_charge_shift=uniform training.seed=$seed
run q_softness_s$seed             model.variant=q            model.total_charge_shift=softness training.seed=$seed
run q+mu_none_s$seed              model.variant=q+mu         model.total_charge_shift=none    training.seed=$seed
run q+mu_uniform_s$seed           model.variant=q+mu         model.total_charge_shift=uniform training.seed=$seed
run q+mu+theta_none_s$seed        model.variant=q+mu+theta   model.total_charge_shift=none    training.seed=$seed
run q+mu+theta_uniform_s$seed     model.variant=q+mu+theta   model.total_charge_shift=uniform training.seed=$seed
run full_none_s$seed              model.variant=full         model.total_charge_shift=none    training.seed=$seed
run full_uniform_s$seed           model.variant=full         model.total_charge_shift=uniform training.seed=$seed
done
