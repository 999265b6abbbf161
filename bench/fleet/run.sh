#!/usr/bin/env bash
# A Redis fleet on this machine for `tern-bench online` (issue 17):
# three redis-server primaries (no replicas; appendonly yes, appendfsync
# always, zset-max-listpack-value 4096) joined by `redis-cli --cluster
# create`, two release relays on them (`--store redis`, bench.toml: rates
# and per-address caps off), then RUNS runs of
#   tern-bench online --pairs 64 --messages N --relay B --send-relay A
# each under the bench lock (held from the first CPU reading to the last), printing every run's msgs/s line, `uptime`,
# and CPU per delivered message (utime+stime over the run, from
# /proc/PID/stat) for the redis-servers, each relay and tern-bench.
#
#   bench/fleet/run.sh [RUNS=3] [MESSAGES=50000]
# Env: REDIS_EXTRA (more redis.conf lines), RELAY_EXTRA (more relay TOML
# lines, e.g. a [redis] table), PERF=DIR (perf profiles of
# relay A, relay B and one primary; PERF_HZ, PERF_CG), STATS=1 (INFO
# commandstats summed over the primaries), TERN_BENCH_LOCK (default /work/notes/bench.lock), KEEP=1 leaves the
# fleet's temp dir. Needs redis-server, redis-cli, flock; run from the
# workspace root after `cargo build --release -p tern-bench -p tern-relay`.
set -euo pipefail
RUNS=${1:-3}
MESSAGES=${2:-50000}
LOCK=${TERN_BENCH_LOCK:-/work/notes/bench.lock}
ROOT=$(pwd)
RELAY=${RELAY_BIN:-$ROOT/target/release/tern-relay}
BENCH=$ROOT/target/release/tern-bench
DIR=$(mktemp -d /tmp/tern-fleet.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$DIR"
}
trap cleanup EXIT

base=$((20000 + RANDOM % 20000))
PORTS=($base $((base + 1)) $((base + 2)))
for p in "${PORTS[@]}"; do
  mkdir -p "$DIR/r$p"
  cat > "$DIR/r$p/redis.conf" <<CONF
port $p
bind 127.0.0.1
protected-mode no
daemonize no
dir $DIR/r$p
cluster-enabled yes
cluster-config-file nodes.conf
cluster-node-timeout 5000
appendonly yes
appendfsync always
save ""
zset-max-listpack-value 4096
logfile $DIR/r$p/redis.log
${REDIS_EXTRA:-}
CONF
  redis-server "$DIR/r$p/redis.conf" &
  PIDS+=($!)
done
REDIS_PIDS=("${PIDS[@]}")
for p in "${PORTS[@]}"; do
  for _ in $(seq 100); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
done
redis-cli --cluster create "${PORTS[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes >/dev/null
for _ in $(seq 300); do
  ok=1
  for p in "${PORTS[@]}"; do redis-cli -p "$p" cluster info | grep -q cluster_state:ok || ok=0; done
  [ $ok = 1 ] && break; sleep 0.2
done

cat > "$DIR/bench.toml" <<CONF
[limits]
max_connections_per_ip = 0
[rates]
handshakes_per_sec = 0
handshakes_burst = 0
retry_above_handshakes_per_sec = 0
connections_per_ip_per_sec = 0
connections_per_ip_burst = 0
registrations_per_ip_per_min = 0
registrations_per_ip_burst = 0
sends_per_token_per_sec = 0
sends_per_token_burst = 0
frames_per_connection_per_sec = 0
frames_per_connection_burst = 0
${RELAY_EXTRA:-}
CONF
SEEDS=$(printf 'redis://127.0.0.1:%s,' "${PORTS[@]}"); SEEDS=${SEEDS%,}
RP=$((base + 100))
declare -A URL
for r in A B; do
  RP=$((RP + 1))
  mkdir -p "$DIR/relay$r"
  "$RELAY" run --listen 127.0.0.1:$RP --data "$DIR/relay$r" --config "$DIR/bench.toml" \
    --store redis --redis "$SEEDS" > "$DIR/relay$r.out" 2> "$DIR/relay$r.err" &
  PIDS+=($!)
  eval "PID_$r=$!"
  for _ in $(seq 300); do grep -q 'relay url:' "$DIR/relay$r.out" && break; sleep 0.1; done
  URL[$r]=$(sed -n 's/^relay url: //p' "$DIR/relay$r.out")
done
echo "fleet: redis ${PORTS[*]}; relay A ${URL[A]} (pid $PID_A); relay B ${URL[B]} (pid $PID_B)"

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)
exec 9>"$LOCK"
for run in $(seq "$RUNS"); do
  # Under the bench lock from here to the last reading, so the CPU counted
  # is this run's (idle redis-servers and relays cost little, but a wait
  # for the lock can be minutes).
  flock 9
  declare -A T0
  for p in "${REDIS_PIDS[@]}" $PID_A $PID_B; do T0[$p]=$(ticks "$p"); done
  for p in "${PORTS[@]}"; do redis-cli -p "$p" config resetstat >/dev/null; done
  PERFS=()
  if [ -n "${PERF:-}" ]; then
    # PERF=DIR: profile relay A, relay B and the first primary over the run.
    mkdir -p "$PERF"
    for t in "A $PID_A" "B $PID_B" "redis ${REDIS_PIDS[0]}"; do
      set -- $t
      perf record -q -F ${PERF_HZ:-2000} ${PERF_CG:--g} -p "$2" -o "$PERF/perf.$1.data" >/dev/null 2>&1 &
      PERFS+=($!)
    done
  fi
  out=$(bash -c "uptime; /usr/bin/time -f 'bench cpu %U %S' '$BENCH' online --pairs 64 --messages $MESSAGES --relay '${URL[B]}' --send-relay '${URL[A]}' 2>&1; uptime")
  for p in "${PERFS[@]}"; do kill -INT "$p"; wait "$p" || true; done
  echo "== run $run"
  echo "$out" | grep -v '^ *$' | grep -v -E '^(setup|register|connect)' 
  if [ -n "${STATS:-}" ]; then
    # STATS=1: every primary's INFO commandstats for the run, summed.
    for p in "${PORTS[@]}"; do redis-cli -p "$p" info commandstats; done | tr -d '\r' |
      awk -F'[:,=]' '/^cmdstat_/ {c[$1]+=$3; u[$1]+=$5}
        END {for (k in c) printf "%-40s calls %9d  usec %10d  per msg %6.2f us\n", k, c[k], u[k], u[k]/'"$MESSAGES"'}' | sort -k5 -n -r
  fi
  redis=0
  for p in "${REDIS_PIDS[@]}"; do redis=$((redis + $(ticks "$p") - ${T0[$p]})); done
  a=$(( $(ticks $PID_A) - ${T0[$PID_A]} )); b=$(( $(ticks $PID_B) - ${T0[$PID_B]} ))
  bench=$(echo "$out" | awk '/bench cpu/ {print $3 + $4}')
  flock -u 9
  awk -v r=$redis -v a=$a -v b=$b -v be="$bench" -v hz=$HZ -v n=$MESSAGES 'BEGIN {
    printf "cpu us/msg: redis(3) %.1f  relayA %.1f  relayB %.1f  bench %.1f  total %.1f\n",
      r/hz/n*1e6, a/hz/n*1e6, b/hz/n*1e6, be/n*1e6, (r+a+b)/hz/n*1e6 + be/n*1e6 }'
done
