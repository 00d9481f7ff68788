#!/bin/sh
# Concatenate the dimer train/test files into /tmp (not the repo).
set -e
D=${1:-/work/shared/data/cacelrfit_lode_dimers}
mkdir -p /tmp/polmp_dimers
cat "$D"/train-id*.xyz > /tmp/polmp_dimers/train.xyz
cat "$D"/test-id*.xyz > /tmp/polmp_dimers/test.xyz
