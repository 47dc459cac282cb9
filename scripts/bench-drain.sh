#!/usr/bin/env bash
# Drain benchmark of the store-and-forward queue, end to end: how fast a gateway empties
# a backlog into a local mosquitto once the cloud broker comes back after an outage,
# against what mosquitto and its own clients sustain for the same messages.
#
# Each run:
#  1. gateway: starts the release gateway with an MQTT sink `cloud` pointing at a
#     mosquitto that is not running, and a rule forwarding every message of a stream;
#     publishes N JSON readings (150 bytes each) into the gateway's embedded broker with
#     `mosquitto_pub -l`; waits until the queue file has not been written for 3 s (every
#     reading is then a queued result); starts mosquitto and a subscriber and times until
#     all N results have arrived. The subscriber's persistent session (QoS 1) was made
#     before the outage, so nothing the gateway sends before the subscriber reconnects is
#     lost; mosquitto runs with `persistence true` only to keep that session over its
#     restart.
#  2. baseline: the very payloads the subscriber received (with their `_msg_id`), published
#     to a fresh mosquitto with `mosquitto_pub -l` to the same subscriber setup: what
#     mosquitto and its clients sustain.
# `mosquitto_pub -l` publishes at QoS 0: with `-q 1` (mosquitto-clients 2.0.11) it stops
# after a few thousand lines of a large input, so it cannot feed either side here.
# Rates: N / (last arrival - first arrival) ("steady") and N / (last arrival - start)
# ("wall": from mosquitto's start for the gateway, which includes the sink's reconnect
# delay of at most `reconnect_max` = 1 s; from the publisher's start for the baseline).
# Prints each run and the medians over the runs; loopback only, ports picked free.
#
# Usage: scripts/bench-drain.sh            (N=200000 RUNS=3)
#   N=...     messages per run          RUNS=...   runs (median reported)
#   CARGO_TARGET_DIR=...  where the release gateway is built (default: target)
#   SKIP_BUILD=1          use the binary already built there
#   KEEP=1                keep the work directory (logs, queue files) for inspection
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-200000}
RUNS=${RUNS:-3}
TARGET=${CARGO_TARGET_DIR:-target}
MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
TOPIC_IN="plant/press/reading"

for tool in "$MOSQUITTO" mosquitto_pub mosquitto_sub python3 curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "missing: $tool" >&2; exit 1; }
done

if [ "${SKIP_BUILD:-0}" != 1 ]; then
  CARGO_TARGET_DIR="$TARGET" nice -n 10 cargo build --release -p fieldgate
fi

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fieldgate-drain.XXXXXX")
BENCH_NAME=bench-drain.sh
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
bench_cleanup() {
  if [ "${KEEP:-0}" = 1 ]; then
    echo "work directory kept: $WORK"
  else
    rm -rf "$WORK"
  fi
}

# A private copy, so that another build into the same target directory cannot replace
# the binary during the runs.
cp "$TARGET/release/fieldgate" "$WORK/fieldgate"
GATEWAY="$WORK/fieldgate"

now() { date +%s.%N; }

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 0.1 s until it succeeds.
wait_until() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "timed out after ${limit}s waiting for $what" >&2
      return 1
    fi
    sleep 0.1
  done
}

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_cloud DIR PORT: starts mosquitto as the cloud, with persistence for the
# subscriber's session (and as root, so that it may write DIR).
start_cloud() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  cat >"$dir/mosquitto.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
user root
persistence true
persistence_location $dir/
autosave_interval 0
max_queued_messages 0
max_inflight_messages 0
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
EOF
  "$MOSQUITTO" -c "$dir/mosquitto.conf" 2>>"$dir/mosquitto.log" &
  MOSQ_PID=$!
  PIDS+=("$MOSQ_PID")
  wait_until 20 "mosquitto on port $port" listening "$port"
}

# make_session PORT: the subscriber's persistent QoS 1 session, subscribed, then left.
make_session() {
  mosquitto_sub -h 127.0.0.1 -p "$1" -i drain-bench-sub -c -q 1 -t 'fieldgate/#' -E
}

# start_sub PORT OUT: resumes the session and records `<arrival time> <payload>` per
# message until N arrived (or SUB_WAIT seconds passed: at least 1,000 messages a second).
SUB_WAIT=$((N / 1000 > 60 ? N / 1000 : 60))
start_sub() {
  mosquitto_sub -h 127.0.0.1 -p "$1" -i drain-bench-sub -c -q 1 -t 'fieldgate/#' \
    -C "$N" -W "$SUB_WAIT" -F '%U %p' >"$2" &
  SUB_PID=$!
  PIDS+=("$SUB_PID")
}

# rates FILE START: "<received> <distinct seq> <steady msgs/s> <wall msgs/s> <mean bytes>"
rates() {
  awk -v start="$2" '
    { t = $1 + 0; if (NR == 1) first = t; last = t
      bytes += length($0) - length($1) - 1
      if (match($0, /"seq":[0-9]+/)) seen[substr($0, RSTART + 6, RLENGTH - 6)] = 1 }
    END { d = 0; for (k in seen) d++
          printf "%d %d %.0f %.0f %.0f\n", NR, d, (NR > 1 ? NR / (last - first) : 0),
                 NR / (last - start), (NR ? bytes / NR : 0) }' "$1"
}

readings150 "$N" >"$WORK/readings.txt"

echo "fieldgate drain benchmark: N=$N, $RUNS run(s), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"

RESULTS=()
for run in $(seq 1 "$RUNS"); do
  dir="$WORK/run$run"
  mkdir -p "$dir/gw/rules"
  cloud_port=$(free_port)
  gw_port=$(free_port)
  admin_port=$(free_port)

  # The subscriber's session, then the outage: mosquitto stopped.
  start_cloud "$dir/cloud" "$cloud_port"
  make_session "$cloud_port"
  stop "$MOSQ_PID"

  cat >"$dir/gw/rules/rules.sql" <<'EOF'
CREATE STREAM readings (device STRING, ts BIGINT, temp DOUBLE, pressure DOUBLE,
  humidity DOUBLE, status STRING, line STRING, shift BIGINT, seq BIGINT)
WITH (DATASOURCE = 'plant/+/reading', FORMAT = 'json');
CREATE RULE forward INTO cloud AS
SELECT device, ts, temp, pressure, humidity, status, line, shift, seq FROM readings;
EOF
  cat >"$dir/gw/fieldgate.toml" <<EOF
gateway_id = "bench"
data_dir = "data"
rules_dir = "rules"
[broker]
listen = "127.0.0.1:$gw_port"
[admin]
listen = "127.0.0.1:$admin_port"
[sinks.cloud]
type = "mqtt"
host = "127.0.0.1"
port = $cloud_port
reconnect_min = "100ms"
reconnect_max = "1s"
EOF
  RUST_LOG="info,rumqttd=warn,rumqttd::router::routing=off" \
    "$GATEWAY" run --config "$dir/gw/fieldgate.toml" >/dev/null 2>"$dir/gw/fieldgate.log" &
  gw_pid=$!
  PIDS+=("$gw_pid")
  wait_until 60 "the gateway's /readyz" curl -sf "http://127.0.0.1:$admin_port/readyz"

  t_pub=$(now)
  mosquitto_pub -h 127.0.0.1 -p "$gw_port" -i drain-bench-pub -q 0 -t "$TOPIC_IN" -l <"$WORK/readings.txt"
  t_pub_done=$(now)
  # Queued: the queue file has not been written for 3 s (bounded: 300 s).
  qfile="$dir/gw/data/queue/cloud.redb"
  wait_until 60 "the queue file" test -s "$qfile"
  seen="" still=0 deadline=$(($(date +%s) + 300))
  while [ "$still" -lt 6 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "queue file still written after 300 s" >&2; exit 1; }
    sleep 0.5
    s=$(stat -c '%s %.9Y' "$qfile")
    if [ "$s" = "$seen" ]; then still=$((still + 1)); else still=0 seen=$s; fi
  done
  size=$(stat -c %s "$qfile")
  t_queued=$(now)

  # The outage ends.
  t_up=$(now)
  start_cloud "$dir/cloud" "$cloud_port"
  start_sub "$cloud_port" "$dir/received.txt"
  wait "$SUB_PID" || true
  forget "$SUB_PID"
  read -r got distinct steady wall bytes < <(rates "$dir/received.txt" "$t_up")
  stop "$gw_pid"
  stop "$MOSQ_PID"
  if [ "$distinct" -ne "$N" ]; then
    echo "run $run: only $distinct of $N distinct results arrived ($got messages); logs in $dir" >&2
    grep -h "fieldgate stopped" "$dir/gw/fieldgate.log" >&2 || true
    KEEP=1
    exit 1
  fi
  ingest=$(awk -v a="$t_pub" -v b="$t_pub_done" -v n="$N" 'BEGIN { printf "%.0f", n / (b - a) }')
  settle=$(awk -v a="$t_pub_done" -v b="$t_queued" 'BEGIN { printf "%.1f", b - a }')

  # Baseline: the same payloads through mosquitto alone.
  cut -d' ' -f2- "$dir/received.txt" >"$dir/payloads.txt"
  base_port=$(free_port)
  start_cloud "$dir/base" "$base_port"
  make_session "$base_port"
  start_sub "$base_port" "$dir/base-received.txt"
  t_base=$(now)
  mosquitto_pub -h 127.0.0.1 -p "$base_port" -i drain-bench-pub -q 0 -t fieldgate/bench/forward -l <"$dir/payloads.txt"
  wait "$SUB_PID" || true
  forget "$SUB_PID"
  read -r bgot _ bsteady bwall _ < <(rates "$dir/base-received.txt" "$t_base")
  stop "$MOSQ_PID"
  [ "$bgot" -eq "$N" ] || { echo "baseline run $run: $bgot of $N arrived" >&2; KEEP=1; exit 1; }

  echo "run $run: queue file $size B for $N results (mean $bytes B delivered); published into the gateway at $ingest msgs/s, file settled ${settle}s later"
  echo "run $run: gateway drain $steady msgs/s steady, $wall msgs/s from mosquitto's start ($got messages, $distinct distinct)"
  echo "run $run: mosquitto alone $bsteady msgs/s steady, $bwall msgs/s from the publisher's start"
  RESULTS+=("$steady $wall $bsteady $bwall")
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
col() { printf '%s\n' "${RESULTS[@]}" | cut -d' ' -f"$1" | median; }
g_steady=$(col 1) g_wall=$(col 2) b_steady=$(col 3) b_wall=$(col 4)
echo "median of $RUNS: gateway drain $g_steady msgs/s steady ($g_wall wall); mosquitto alone $b_steady msgs/s steady ($b_wall wall)"
awk -v g="$g_steady" -v b="$b_steady" \
  'BEGIN { printf "ratio gateway drain / mosquitto alone (steady): %.2f\n", g / b }'
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
