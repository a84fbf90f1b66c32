#!/usr/bin/env bash
# Counts the instructions the payments example's pipeline executes on one
# fixed input, with valgrind's callgrind: a measure of CPU work that, unlike
# time, does not move with the load of a shared machine. Compare two builds
# by running this on each (same TRANSFERS, same valgrind).
#
#   bash scripts/instructions.sh [TRANSFERS]      # default 3000
#
# Prints one JSON line. `pipeline` is the run's total less what does not
# scale with the events or is free on the machine: generating the input,
# training the compression dictionaries (once per source) and SHA-256
# (valgrind does not emulate the SHA extensions `sha2` uses natively, so
# under it SHA-256 costs about a fifth of the run). Counts of one build move
# by up to 4 % with the conditions of the run (how far ingestion gets ahead
# of the checks depends on timing): compare builds in runs made side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
TRANSFERS=${1:-3000}
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
cargo build --release --locked --example payments >&2
WORK=$(mktemp -d "${TMPDIR:-/tmp}/overseer-instructions.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
valgrind --tool=callgrind --callgrind-out-file="$WORK/callgrind.out" \
    "${CARGO_TARGET_DIR:-target}"/release/examples/payments --transfers "$TRANSFERS" --quiet >"$WORK/summary.json" 2>/dev/null
callgrind_annotate --inclusive=yes "$WORK/callgrind.out" >"$WORK/inclusive.txt" 2>/dev/null
# The inclusive count of the first function whose name contains $1 (0 if none).
count() {
    grep -m1 -F "$1" "$WORK/inclusive.txt" | awk '{gsub(",", "", $1); print $1}' | grep . || echo 0
}
total=$(count "PROGRAM TOTALS")
input=$(count "payments::driver::prepare [")
training=$(count "compression::train [")
sha=$(count "sha2::sha256::compress256 [")
events=$(grep -o '"events":[0-9]*' "$WORK/summary.json" | cut -d: -f2)
pipeline=$((total - input - training - sha))
echo "{\"transfers\":$TRANSFERS,\"events\":$events,\"total\":$total,\"input\":$input,\"training\":$training,\"sha256\":$sha,\"pipeline\":$pipeline,\"pipeline_per_event\":$((pipeline / events))}"
