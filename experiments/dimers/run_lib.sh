# Shared by experiments/{dimers,nacl,carbon_chain}/run_table.sh (source it after
# setting CONFIG and DIR).  run NAME overrides...: skip a finished run (metrics.json),
# resume one with checkpoints, start it otherwise.
OUT=${OUT:-runs/charged}
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
