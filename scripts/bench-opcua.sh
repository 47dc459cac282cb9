#!/usr/bin/env bash
# OPC UA subscription benchmark: an asyncua server (tests/sim/opcua_server.py --fast N
# --rate R) changes N Double nodes R times a second; fieldgate (release build) subscribes
# to them in one node group (publishing interval 100 ms, sampling as fast as the server
# can, queue 100) and a rule counts the rows. Measured after a warm-up, for DURATION s:
#   - value changes/s the gateway received (fieldgate_opcua_values_total);
#   - the gateway's CPU (% of one core) and CPU per change (µs);
#   - the server's CPU, to tell whether the server or the gateway is the limit.
# The baseline is asyncua's own client (tests/sim/opcua_subscribe.py) subscribed to the
# same nodes the same way, measured the same way, so CPU per change can be compared.
# Each configuration runs RUNS times; the summary gives medians.
#
# Loopback only, ports picked free at run time. Settings (env):
#   CONFIGS="100x10 100x40 1000x4"  NODESxRATE (changes asked per second: the product), space separated
#   RUNS=3 WARMUP=5 DURATION=15
#   BUILD=1                    0 skips `cargo build --release -p fieldgate`
#   CARGO_TARGET_DIR, FIELDGATE, OUT   as in scripts/bench-modbus.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CONFIGS=${CONFIGS:-"100x10 100x40 1000x4"}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-15}
BUILD=${BUILD:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FIELDGATE=${FIELDGATE:-$TARGET_DIR/release/fieldgate}
OUT=${OUT:-$(mktemp -d /tmp/bench-opcua.XXXXXX)}
SERVER="$ROOT/tests/sim/opcua_server.py"
CLIENT="$ROOT/tests/sim/opcua_subscribe.py"
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"

BENCH_NAME=bench-opcua.sh
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh

die() {
  echo "bench-opcua: $*" >&2
  exit 1
}

if [ "$BUILD" = 1 ]; then
  echo "building fieldgate (release, $TARGET_DIR)"
  CARGO_TARGET_DIR="$TARGET_DIR" nice -n 10 cargo build --release -p fieldgate
fi
[ -x "$FIELDGATE" ] || die "no binary at $FIELDGATE"
python3 -c 'import asyncua' 2>/dev/null || die "python3 with asyncua is needed"

ticks() { # pid -> utime+stime
  local s
  s=$(cat "/proc/$1/stat")
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}

metric() { # admin_port name
  curl -s "http://127.0.0.1:$1/metrics" | awk -v m="$2" '$1 ~ "^"m"(\\{|$)" { s += $2 } END { print s + 0 }'
}

start_server() { # dir nodes rate -> SERVER_PID, SERVER_PORT
  SERVER_PORT=$(free_port)
  python3 "$SERVER" --port "$SERVER_PORT" --fast "$2" --rate "$3" >"$1/server.log" 2>&1 &
  SERVER_PID=$!
  PIDS+=("$SERVER_PID")
  local i
  for ((i = 0; i < 300; i++)); do
    grep -q '^ready' "$1/server.log" && return 0
    kill -0 "$SERVER_PID" 2>/dev/null || die "the server exited; see $1/server.log"
    sleep 0.1
  done
  die "the server did not start; see $1/server.log"
}

run_gateway() { # dir nodes -> prints "changes_per_s gw_cpu_pct us_per_change server_cpu_pct"
  local dir=$1 nodes=$2 mqtt admin pid i
  read -r mqtt admin <<<"$(free_ports 2)"
  mkdir -p "$dir/rules"
  {
    printf 'gateway_id = "bench"\ndata_dir = "data"\nrules_dir = "rules"\n'
    printf '[broker]\nlisten = "127.0.0.1:%s"\n[admin]\nlisten = "127.0.0.1:%s"\n' "$mqtt" "$admin"
    printf '[sinks.disk]\ntype = "file"\npath = "out/{rule}.jsonl"\n'
    printf '[[opcua.servers]]\nname = "sim"\nendpoint = "opc.tcp://127.0.0.1:%s/fieldgate/test/"\n' "$SERVER_PORT"
    printf '[[opcua.servers.groups]]\nname = "fast"\npublishing_interval = "100ms"\nsampling_interval = "0s"\nqueue_size = 100\nnodes = [\n'
    for ((i = 0; i < nodes; i++)); do
      printf '  { name = "f%d", node_id = "ns=2;s=Fast%d", type = "double" },\n' "$i" "$i"
    done
    printf ']\n'
  } >"$dir/fieldgate.toml"
  cat >"$dir/rules/count.sql" <<'SQL'
CREATE STREAM fast (f0 DOUBLE) WITH (TYPE = 'opcua', DATASOURCE = 'sim/fast');
CREATE RULE rows_10s INTO disk AS
SELECT count(*) AS rows FROM fast GROUP BY TUMBLINGWINDOW(ss, 10);
SQL
  (cd "$dir" && exec "$FIELDGATE" run --config fieldgate.toml) >"$dir/gw.out" 2>"$dir/gw.log" &
  pid=$!
  PIDS+=("$pid")
  wait_port "$admin" "the admin endpoint"
  for ((i = 0; i < 300; i++)); do
    [ "$(metric "$admin" fieldgate_opcua_values_total)" -gt 0 ] && break
    sleep 0.1
  done
  sleep "$WARMUP"
  local v0 g0 s0 t0 v1 g1 s1 t1
  v0=$(metric "$admin" fieldgate_opcua_values_total); g0=$(ticks "$pid"); s0=$(ticks "$SERVER_PID"); t0=$(now_us)
  sleep "$DURATION"
  v1=$(metric "$admin" fieldgate_opcua_values_total); g1=$(ticks "$pid"); s1=$(ticks "$SERVER_PID"); t1=$(now_us)
  stop "$pid"
  awk -v dv=$((v1 - v0)) -v dg=$((g1 - g0)) -v ds=$((s1 - s0)) -v dt=$((t1 - t0)) -v hz="$HZ" 'BEGIN {
    secs = dt / 1e6; rate = dv / secs; cpu = dg / hz
    printf "%.0f %.1f %.2f %.1f\n", rate, 100 * cpu / secs, (dv > 0 ? 1e6 * cpu / dv : 0), 100 * ds / hz / secs }'
}

run_baseline() { # dir nodes -> same fields
  local dir=$1 nodes=$2 s0 s1 t0 t1 out
  s0=$(ticks "$SERVER_PID"); t0=$(now_us)
  out=$(python3 "$CLIENT" "opc.tcp://127.0.0.1:$SERVER_PORT/fieldgate/test/" "$nodes" "$WARMUP" "$DURATION" 2>"$dir/baseline.log")
  s1=$(ticks "$SERVER_PID"); t1=$(now_us)
  echo "$out" >"$dir/baseline.json"
  python3 -c "
import json, sys
r = json.loads(sys.argv[1]); total = (int(sys.argv[4]) - int(sys.argv[3])) / 1e6
srv = (int(sys.argv[2].split()[1]) - int(sys.argv[2].split()[0])) / int(sys.argv[5])
print('%.0f %.1f %.2f %.1f' % (r['changes'] / r['seconds'], 100 * r['cpu_seconds'] / r['seconds'],
      1e6 * r['cpu_seconds'] / max(r['changes'], 1), 100 * srv / total))
" "$out" "$s0 $s1" "$t0" "$t1" "$HZ"
}

echo "machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(uname -r)"
printf 'config\trun\twho\tchanges_per_s\tcpu_pct\tus_per_change\tserver_cpu_pct\n' >"$OUT/results.tsv"
for cfg in $CONFIGS; do
  nodes=${cfg%x*}
  rate=${cfg#*x}
  for ((run = 1; run <= RUNS; run++)); do
    dir="$OUT/$cfg-$run"
    mkdir -p "$dir"
    start_server "$dir" "$nodes" "$rate"
    printf '%s\t%s\tfieldgate\t%s\n' "$cfg" "$run" "$(run_gateway "$dir" "$nodes" | tr ' ' '\t')" >>"$OUT/results.tsv"
    printf '%s\t%s\tasyncua\t%s\n' "$cfg" "$run" "$(run_baseline "$dir" "$nodes" | tr ' ' '\t')" >>"$OUT/results.tsv"
    stop "$SERVER_PID"
  done
done
echo "results: $OUT/results.tsv"
python3 - "$OUT/results.tsv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
for cfg in dict.fromkeys(r["config"] for r in rows):
    med = {}
    for who in ("fieldgate", "asyncua"):
        rs = [r for r in rows if r["config"] == cfg and r["who"] == who]
        med[who] = {k: statistics.median(float(r[k]) for r in rs)
                    for k in ("changes_per_s", "cpu_pct", "us_per_change", "server_cpu_pct")}
    g, b = med["fieldgate"], med["asyncua"]
    n, rate = cfg.split("x")
    print(f"{n} nodes x {rate}/s asked: fieldgate {g['changes_per_s']:.0f} changes/s at "
          f"{g['cpu_pct']:.1f}% of a core ({g['us_per_change']:.2f} us/change; server "
          f"{g['server_cpu_pct']:.0f}%); asyncua client {b['changes_per_s']:.0f}/s at "
          f"{b['cpu_pct']:.1f}% ({b['us_per_change']:.2f} us/change); CPU per change "
          f"fieldgate/asyncua = {g['us_per_change'] / max(b['us_per_change'], 1e-9):.3f}")
PY
