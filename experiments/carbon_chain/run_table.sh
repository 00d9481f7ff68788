#!/usr/bin/env bash
# Variant x total-charge x seed table of the carbon chains C10H2 / C10H3+ (experiments/README.md,
# "Charged systems").  One run per line; each run is skipped when finished
# (metrics.json), resumed when it has checkpoints, started otherwise, so the script
# can be re-run after an interruption.  Run from the repository root:
#
#   OUT=runs/charged bash experiments/dimers/run_table.sh
#   python experiments/dimers/collect.py "$OUT/carbon_chain" --set carbon_chain --json "$OUT/carbon_chain/tables.json"
#
# Variables: OUT (output root, default runs/charged), POLMP (the polmp command, default
# "python -m polmp.cli.main"), EXTRA (more dotted overrides for every run, e.g.
# "training.num_devices=1").
set -euo pipefail
OUT=${OUT:-runs/charged}
CONFIG=experiments/carbon_chain/charged.yaml
DIR="$OUT/carbon_chain"
source experiments/dimers/run_lib.sh

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
