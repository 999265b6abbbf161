#!/bin/bash
# The relay and the load generator as two processes, each on the cores
# given (docs/performance.md, "Group fan-out (issue 14)").
# usage: bench/results/fanout/split.sh RELAY_CORES BENCH_CORES MEMBERS JSON
#   e.g. bench/results/fanout/split.sh 0 1 1000 pinned.json
set -eu
B=${TERN_BENCH:-target/release/tern-bench}
RC=$1; BC=$2; M=$3; JSON=$4
D=$(mktemp -d)
mkfifo "$D/in"
exec 3<>"$D/in"
# The relay stops when its stdin closes.
taskset -c "$RC" "$B" serve --data-dir "$D" 3>&- <"$D/in" >"$D/url" 2>"$D/err" &
RP=$!
for _ in $(seq 100); do [ -s "$D/url" ] && break; sleep 0.1; done
taskset -c "$BC" "$B" --relay "$(head -1 "$D/url")" --runs 3 --json "$JSON" \
    fanout --members "$M" --store 0 --sends 100 --burst 20 --timeout 600 || true
exec 3>&-
wait $RP
rm -rf "$D"
