#!/usr/bin/env bash
# Fleet-sink benchmark: how fast a gateway uploads a backlog into a three-replica
# JetStream stream on a three-node NATS cluster, one message per result and in
# `json_array` batches, against the MQTT sink into mosquitto in the same run.
#
# Each run, for each case (mqtt message, mqtt json_array, nats message, nats json_array):
#  1. starts the release gateway with one sink `up` whose destination is not there yet
#     (mosquitto not started; for NATS the cluster runs but the stream does not exist),
#     and a rule forwarding every reading;
#  2. publishes N JSON readings (150 bytes each) into the gateway's broker with
#     `mosquitto_pub -l` and waits until all N are queued results;
#  3. brings the destination up (starts mosquitto; creates the R3 stream) and polls
#     /metrics every 50 ms until the queue is empty: every result confirmed by a PUBACK
#     (mosquitto) or a PubAck (JetStream, stored on a quorum of the replicas).
# Rates: N / (empty - first delivery) ("steady") and N / (empty - destination up)
# ("wall"). For NATS the stream is read back after each run: N results, N distinct ids.
# Prints each run, the medians, and each case's ratio to the MQTT sink's one message per
# result. Loopback only, ports picked free.
#
# Usage: scripts/bench-nats.sh            (N=200000 RUNS=3, batches of 100)
#   N=...  RUNS=...  BATCH=...            results per run, runs, results per batch
#   CARGO_TARGET_DIR=...                  where the release binaries are built (target)
#   SKIP_BUILD=1                          use the binaries already built there
#   KEEP=1                                keep the work directory
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
RUNS=${RUNS:-3}
BATCH=${BATCH:-100}
TARGET=${CARGO_TARGET_DIR:-target}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server || echo /usr/bin/nats-server)}
for tool in "$MOSQUITTO" "$NATS_SERVER" mosquitto_pub python3 curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool" >&2; exit 1; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  CARGO_TARGET_DIR="$TARGET" nice -n 10 cargo build --release -p fieldgate -p fieldgate-e2e --bin fieldgate --bin nats_stream
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/fieldgate-nats.XXXXXX")
BENCH_NAME=bench-nats.sh
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
bench_cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
# Private copies: a build into the same target directory cannot swap them mid-run.
mkdir -p "$WORK/bin"
cp "$TARGET/release/fieldgate" "$TARGET/release/nats_stream" "$WORK/bin/"
GATEWAY=$WORK/bin/fieldgate
STREAMCTL=$WORK/bin/nats_stream

now() { date +%s.%N; }

# metric PORT NAME: the value of one sample of the gateway's /metrics (empty if none).
metric() {
  { curl -sf "http://127.0.0.1:$1/metrics" || true; } | awk -v n="$2" '$1 == n { v = $2 } END { print v }'
}

# The cluster: three servers, routes between them, JetStream on disk.
read -r -a CPORTS <<<"$(free_ports 6)"
SERVERS=""
for i in 0 1 2; do
  SERVERS+="${SERVERS:+,}nats://127.0.0.1:${CPORTS[$i]}"
done
for i in 0 1 2; do
  d="$WORK/nats/n$i"
  mkdir -p "$d"
  routes=""
  for j in 0 1 2; do
    [ "$j" = "$i" ] || routes+="${routes:+, }nats-route://127.0.0.1:${CPORTS[$((j + 3))]}"
  done
  cat >"$d/nats.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${CPORTS[$i]}
log_file: "$d/nats.log"
jetstream { store_dir: "$d", max_memory_store: 256MB, max_file_store: 8GB }
cluster { name: bench, listen: 127.0.0.1:${CPORTS[$((i + 3))]}, routes: [$routes] }
EOF
  "$NATS_SERVER" -c "$d/nats.conf" >/dev/null 2>&1 &
  PIDS+=("$!")
done
for i in 0 1 2; do wait_port "${CPORTS[$i]}" nats-server; done

readings150 "$N" >"$WORK/readings.txt"

echo "fieldgate fleet-sink benchmark: N=$N, $RUNS run(s), batches of $BATCH, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "nats-server $("$NATS_SERVER" --version | awk '{ print $2 }'), three nodes, stream replicas 3, file storage"

CASES=(mqtt-message mqtt-json_array nats-message nats-json_array)
declare -A STEADY WALL
for run in $(seq 1 "$RUNS"); do
  for case in "${CASES[@]}"; do
    kind=${case%%-*} format=${case#*-}
    dir="$WORK/run$run-$case"
    mkdir -p "$dir/gw/rules" "$dir/cloud"
    read -r gw_port admin_port cloud_port <<<"$(free_ports 3)"
    stream="BENCH_${run}_${format^^}"
    cat >"$dir/gw/rules/rules.sql" <<'EOF'
CREATE STREAM readings (device STRING, ts BIGINT, temp DOUBLE, pressure DOUBLE,
  humidity DOUBLE, status STRING, line STRING, shift BIGINT, seq BIGINT)
WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');
CREATE RULE forward INTO up AS
SELECT device, ts, temp, pressure, humidity, status, line, shift, seq FROM readings;
EOF
    if [ "$kind" = mqtt ]; then
      sink="type = \"mqtt\"
host = \"127.0.0.1\"
port = $cloud_port"
    else
      sink="type = \"nats\"
servers = [\"${SERVERS//,/\", \"}\"]
stream = \"$stream\"
subject = \"fleet.$stream.{rule}\""
    fi
    cat >"$dir/gw/fieldgate.toml" <<EOF
gateway_id = "bench"
data_dir = "data"
rules_dir = "rules"
[broker]
listen = "127.0.0.1:$gw_port"
[admin]
listen = "127.0.0.1:$admin_port"
[queue]
drain_timeout = "1s"
[sinks.up]
$sink
format = "$format"
batch_max = $BATCH
reconnect_min = "50ms"
reconnect_max = "200ms"
EOF
    "$GATEWAY" run --config "$dir/gw/fieldgate.toml" >/dev/null 2>"$dir/gw/fieldgate.log" &
    gw_pid=$!
    PIDS+=("$gw_pid")
    for _ in $(seq 600); do
      curl -sf "http://127.0.0.1:$admin_port/readyz" >/dev/null 2>&1 && break
      sleep 0.1
    done
    mosquitto_pub -h 127.0.0.1 -p "$gw_port" -i nats-bench-pub -q 0 -t plant/press/reading -l <"$WORK/readings.txt"
    queued=""
    for _ in $(seq 3000); do
      queued=$(metric "$admin_port" 'fieldgate_queue_entries{sink="up"}')
      [ "${queued:-0}" = "$N" ] && break
      sleep 0.1
    done
    [ "${queued:-0}" = "$N" ] || { echo "run $run $case: $queued of $N queued" >&2; KEEP=1; exit 1; }

    t_up=$(now)
    if [ "$kind" = mqtt ]; then
      start_mosquitto "$dir/cloud" "$cloud_port"
    else
      "$STREAMCTL" create --servers "$SERVERS" --stream "$stream" --subjects "fleet.$stream.>" --replicas 3
    fi
    t_first="" left=$N deadline=$(($(date +%s) + 600))
    while [ "$left" != 0 ]; do
      [ "$(date +%s)" -lt "$deadline" ] || { echo "run $run $case: $left left after 600 s" >&2; KEEP=1; exit 1; }
      sleep 0.05
      left=$(metric "$admin_port" 'fieldgate_queue_entries{sink="up"}')
      left=${left:-$N}
      if [ -z "$t_first" ] && [ "$left" != "$N" ]; then t_first=$(now); fi
    done
    t_done=$(now)
    dups=$(metric "$admin_port" 'fieldgate_sink_duplicates_total{sink="up"}')
    stop "$gw_pid"
    if [ "$kind" = mqtt ]; then
      stop "$MOSQ_PID"
      check="confirmed by PUBACKs"
    else
      check=$("$STREAMCTL" count --servers "$SERVERS" --stream "$stream")
      results=$(python3 -c 'import json,sys; c=json.loads(sys.argv[1]); print(c["results"], c["distinct_ids"])' "$check")
      [ "$results" = "$N $N" ] || { echo "run $run $case: the stream holds $check" >&2; KEEP=1; exit 1; }
      check="stream: $check, duplicates reported $dups"
    fi
    steady=$(awk -v a="$t_first" -v b="$t_done" -v n="$N" 'BEGIN { printf "%.0f", n / (b - a) }')
    wall=$(awk -v a="$t_up" -v b="$t_done" -v n="$N" 'BEGIN { printf "%.0f", n / (b - a) }')
    echo "run $run $case: $steady results/s steady, $wall from the destination's start ($check)"
    STEADY[$case]+="$steady "
    WALL[$case]+="$wall "
  done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
base=$(echo "${STEADY[mqtt-message]}" | median)
for case in "${CASES[@]}"; do
  s=$(echo "${STEADY[$case]}" | median)
  w=$(echo "${WALL[$case]}" | median)
  awk -v c="$case" -v s="$s" -v w="$w" -v b="$base" -v r="$RUNS" \
    'BEGIN { printf "median of %d: %-16s %7.0f results/s steady, %7.0f wall; ratio to mqtt-message %.2f\n", r, c, s, w, s / b }'
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
