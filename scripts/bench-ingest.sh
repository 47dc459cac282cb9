#!/usr/bin/env bash
# Ingest benchmark of the embedded broker: devices publishing QoS 1 (BENCH_QOS) as fast
# as their PUBACKs come back, over 1, 4, 100 and 1,000 connections, into
#   mosquitto           persistence false, relaying to one subscriber (bench_sub)
#   mosquitto_persist   the same with persistence true (its default autosave)
#   fieldgate           broker.ack = "durable" (the default): a PUBACK only once the
#                       message is in the ingest journal on disk; one stream decodes
#                       every message and one rule reads every row (and keeps none)
#   fieldgate_received  the same with broker.ack = "received"
# Each run has a full-rate phase (BENCH_SECONDS), which gives the sustained rate, then a
# phase at half that rate (BENCH_LATENCY_SECONDS) which gives the PUBACK latency p50/p99
# that `fieldgate simulate` measured (PUBLISH written to PUBACK read, per message).
#
# Sustained rate:
#   mosquitto: rows that reached the subscriber / (arrival of the last row − start);
#   fieldgate: rows the stream decoded / (moment the rule had taken every acknowledged
#     row − start), so what the journal still held at the end of the load counts
#     against it.
# `PUBACK/s` is the devices' view: messages acknowledged / the load's duration.
# Everything runs on loopback, on ports picked free at run time; every wait is bounded;
# a trap stops every process this script started. The results replace the part of
# docs/benchmarks.md between `<!-- bench-ingest.sh:begin -->` and `<!-- bench-ingest.sh:end -->`.
#
# Environment (defaults in brackets):
#   BENCH_TARGETS ["mosquitto mosquitto_persist fieldgate fieldgate_received"]
#   BENCH_CONNECTIONS_LIST ["1 4 100 1000"]  BENCH_REPEAT [3]  BENCH_QOS [1]
#   BENCH_REP_START [1] (number of the first repetition, to add runs to earlier ones)
#   BENCH_SECONDS [10]  BENCH_LATENCY_SECONDS [10]  BENCH_DRAIN_TIMEOUT [120]
#   BENCH_DEVICES [1000] (at least one per connection)
#   BENCH_DOC [docs/benchmarks.md] (empty: do not touch the doc)
#   BENCH_OUT [target/bench-ingest/<time>]  BENCH_BUILD [1] (0: use the binaries as built)
#   BENCH_BIN_DIR [$CARGO_TARGET_DIR/release]
#   BENCH_REPORT (results.jsonl files of earlier runs: print the table and rewrite the doc
#                 from them, with this run's results if it runs any)
#   BENCH_REPEAT=0 runs nothing (with BENCH_REPORT: only the table)
# A run whose load generator fails (a device connection closed) is recorded with its
# error and left out of the medians; the benchmark goes on.set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

TARGETS=${BENCH_TARGETS:-mosquitto mosquitto_persist fieldgate fieldgate_received}
CONNECTIONS_LIST=${BENCH_CONNECTIONS_LIST:-1 4 100 1000}
REPEAT=${BENCH_REPEAT:-3}
REP_START=${BENCH_REP_START:-1}
QOS=${BENCH_QOS:-1}
SUB_SECONDS=$((SECONDS_FULL + DRAIN_TIMEOUT + 30))
SECONDS_FULL=${BENCH_SECONDS:-10}
SECONDS_HALF=${BENCH_LATENCY_SECONDS:-10}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-120}
DEVICES=${BENCH_DEVICES:-1000}
DOC=${BENCH_DOC-docs/benchmarks.md}
OUT=$(realpath -m "${BENCH_OUT:-$ROOT/target/bench-ingest/$(date -u +%Y%m%dT%H%M%SZ)}")
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$(realpath -m "${BENCH_BIN_DIR:-$TARGET/release}")
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

for tool in curl python3 "$MOSQUITTO"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench-ingest.sh: $tool is missing" >&2; exit 1; }
done
BENCH_NAME=bench-ingest.sh
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
bench_binaries "${BENCH_BUILD:-1}"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
# 1,000 connections and a broker on one machine: more descriptors than the usual 1,024.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

start_gateway() { # dir ack -> GW_PID, ADMIN_PORT
  local dir=$1
  ADMIN_PORT=$(free_port)
  mkdir -p "$dir/rules"
  cat >"$dir/fieldgate.toml" <<EOF
gateway_id = "bench"
data_dir = "data"
rules_dir = "rules"

[broker]
listen = "127.0.0.1:$LOAD_PORT"
ack = "$2"
max_connections = 100000
max_inflight = 1000

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "warn"

[sinks.local]
type = "file"
path = "out/{rule}.jsonl"
EOF
  cat >"$dir/rules/bench.sql" <<'EOF'
CREATE STREAM t (device STRING, ts BIGINT, sent_us BIGINT, temp DOUBLE) WITH (DATASOURCE = 'sensors/+/telemetry', TIMESTAMP = 'ts', LATENESS = '1s');
CREATE RULE none INTO local AS SELECT device, temp FROM t WHERE temp > 1000;
EOF
  (cd "$dir" && exec "$BIN/fieldgate" run --config fieldgate.toml) >"$dir/fieldgate.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  local i
  for ((i = 0; i < 300; i++)); do
    curl -sf --max-time 2 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$GW_PID" 2>/dev/null || { tail -20 "$dir/fieldgate.log" >&2; return 1; }
    sleep 0.1
  done
  echo "bench-ingest.sh: fieldgate not ready within 30 s" >&2
  return 1
}

metric() { # name: the sum of its series in $METRICS
  awk -v m="$1" 'index($0, m) == 1 && (substr($0, length(m) + 1, 1) ~ /[{ ]/) { s += $NF }
    END { printf "%.0f\n", s }' <<<"$METRICS"
}

# Waits (bounded) until the rule has taken `want` rows; prints the moment (µs) the first
# poll saw the final count.
wait_taken() { # want
  local deadline taken=0 was=-1 changed
  changed=$(now_us)
  deadline=$(($(date +%s) + DRAIN_TIMEOUT))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    METRICS=$(curl -sf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" || true)
    taken=$(metric fieldgate_rule_records_in_total)
    [ "$taken" -eq "$was" ] || changed=$(now_us)
    was=$taken
    if [ "$taken" -ge "$1" ]; then
      echo "$changed"
      return 0
    fi
    sleep 0.1
  done
  echo "  the rule took $taken of $1 rows within ${DRAIN_TIMEOUT}s" >&2
  now_us
}

simulate() { # connections rate seconds
  "$BIN/fieldgate" simulate --broker "127.0.0.1:$LOAD_PORT" --devices "$DEVICES_RUN" \
    --connections "$1" --rate "$2" --duration "$3s" --qos "$QOS" \
    --topic 'sensors/{device}/telemetry' --json
}

failed() { # dir target connections rep what: records a run that could not be measured
  echo "  $2 $3 conns #$4: $5 failed: $(tail -c 300 "$1/simulate.err" | tr '\n' ' ')" >&2
  python3 -c 'import json, sys; print(json.dumps({"target": sys.argv[1], "connections": int(sys.argv[2]), "rep": int(sys.argv[3]), "qos": int(sys.argv[4]), "error": sys.argv[5]}))' \
    "$2" "$3" "$4" "$QOS" "$5: $(tail -c 300 "$1/simulate.err")" >>"$RESULTS"
  cleanup
}

run_one() { # target connections rep
  local target=$1 conns=$2 rep=$3
  local dir="$OUT/$target-$conns-$rep"
  mkdir -p "$dir"
  DEVICES_RUN=$((DEVICES > conns ? DEVICES : conns))
  LOAD_PORT=$(free_port)
  local pid sub_pid="" gateway=0
  case $target in
    mosquitto) start_mosquitto "$dir" "$LOAD_PORT"; pid=$MOSQ_PID ;;
    mosquitto_persist) start_mosquitto "$dir" "$LOAD_PORT" true; pid=$MOSQ_PID ;;
    fieldgate) start_gateway "$dir" durable; pid=$GW_PID; gateway=1 ;;
    fieldgate_received) start_gateway "$dir" received; pid=$GW_PID; gateway=1 ;;
    *) echo "bench-ingest.sh: unknown target $target" >&2; return 1 ;;
  esac
  [ "$gateway" = 1 ] || { start_sub "$dir" sub-full "$LOAD_PORT" "$SUB_SECONDS"; sub_pid=$SUB_PID; }
  local cpu0 t0 sim t_done cpu1 t1
  cpu0=$(cpu_seconds "$pid")
  t0=$(now_us)
  sim=$(simulate "$conns" 0 "$SECONDS_FULL" 2>"$dir/simulate.err") || { failed "$dir" "$target" "$conns" "$rep" "full-rate load"; return 0; }
  t1=$(now_us)
  cpu1=$(cpu_seconds "$pid")
  if [ "$gateway" = 1 ]; then
    t_done=$(wait_taken "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["acknowledged"])' "$sim")")
    curl -sf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" >"$dir/metrics-full.txt" || true
  else
    wait_sub "$sub_pid" "$SUB_SECONDS"
    t_done=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["last_arrival_us"] or 0)' "$dir/sub-full.json")
    : >"$dir/metrics-full.txt"
  fi
  local half_rate sim_half
  half_rate=$(python3 - "$sim" "$t0" "$t_done" "$dir/metrics-full.txt" "$dir/sub-full.json" "$gateway" <<'EOF'
import json, sys
sim, t0, done, gateway = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[6] == "1"
if gateway:
    rows = sum(float(l.rsplit(" ", 1)[1]) for l in open(sys.argv[4]) if l.startswith("fieldgate_stream_rows_total"))
else:
    rows = json.load(open(sys.argv[5]))["rows"]
print(max(int(rows / max((done - t0) / 1e6, 1e-3) / 2), 1))
EOF
)
  sim_half=$(simulate "$conns" "$half_rate" "$SECONDS_HALF" 2>"$dir/simulate.err") || { failed "$dir" "$target" "$conns" "$rep" "half-rate load"; return 0; }
  local rss
  rss=$(peak_rss_bytes "$pid")
  stop "$pid" 20
  python3 - "$dir" "$target" "$conns" "$rep" "$sim" "$sim_half" "$t0" "$t1" "$t_done" "$cpu0" "$cpu1" "$half_rate" "$rss" "$gateway" "$QOS" >>"$RESULTS" <<'EOF'
import json, os, sys
(d, target, conns, rep, sim, sim_half, t0, t1, done, cpu0, cpu1, half_rate, rss, gateway, qos) = sys.argv[1:]
sim, half = json.loads(sim), json.loads(sim_half)
t0, t1, done = int(t0), int(t1), int(done)
m = {}
for line in open(os.path.join(d, "metrics-full.txt")):
    if line and not line.startswith("#"):
        k, _, v = line.rpartition(" ")
        try:
            m[k.split("{")[0]] = m.get(k.split("{")[0], 0) + float(v)
        except ValueError:
            pass
if gateway == "1":
    rows = m.get("fieldgate_stream_rows_total", 0)
else:
    rows = json.load(open(os.path.join(d, "sub-full.json")))["rows"]
r = {"target": target, "connections": int(conns), "rep": int(rep), "qos": int(qos),
     "sent": sim["sent"], "acknowledged": sim["acknowledged"],
     "puback_rate": sim["acknowledged"] / sim["seconds"], "rows": rows,
     "rate": rows / max((done - t0) / 1e6, 1e-3), "lost": sim["acknowledged"] - int(rows),
     "cpu_cores": (float(cpu1) - float(cpu0)) / ((t1 - t0) / 1e6),
     "peak_rss_bytes": int(rss), "half_rate": int(half_rate),
     "half_sim_rate": half["rate"], "puback_full": sim.get("puback"), "puback_half": half.get("puback")}
if gateway == "1" and m.get("fieldgate_journal_commit_seconds_count"):
    r["commits"] = m["fieldgate_journal_commit_seconds_count"]
    r["commit_mean_ms"] = 1e3 * m["fieldgate_journal_commit_seconds_sum"] / m["fieldgate_journal_commit_seconds_count"]
    r["entries_per_commit"] = m.get("fieldgate_journal_appended_total", 0) / m["fieldgate_journal_commit_seconds_count"]
print(json.dumps(r))
EOF
  tail -1 "$RESULTS" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
h = r["puback_half"] or {}
print("  %-18s %4d conns #%d: %8s rows/s (PUBACK %8s/s, lost %d), half load %s/s: PUBACK p50 %s ms p99 %s ms, cpu %.2f, rss %.0f MiB%s" % (
    r["target"], r["connections"], r["rep"], format(round(r["rate"]), ","), format(round(r["puback_rate"]), ","),
    r["lost"], format(r["half_rate"], ","), h.get("p50_ms"), h.get("p99_ms"), r["cpu_cores"], r["peak_rss_bytes"] / 2**20,
    ", %.1f entries per commit of %.2f ms" % (r["entries_per_commit"], r["commit_mean_ms"]) if "commits" in r else ""))'
  PIDS=()
}

STARTED=$(date -u +'%Y-%m-%d %H:%M UTC')
echo "bench-ingest.sh: results in $OUT"
for ((rep = REP_START; rep < REP_START + REPEAT; rep++)); do
  for conns in $CONNECTIONS_LIST; do
    for target in $TARGETS; do
      run_one "$target" "$conns" "$rep"
    done
  done
done

MACHINE="$(awk -F': ' '/^model name/ { m = $2 } END { print m }' /proc/cpuinfo), $(nproc) vCPUs, $(free -g | awk '/^Mem:/ { print $2 }') GiB, $(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r), disk $(df -h "$OUT" | awk 'NR == 2 { print $1 }'), mosquitto $("$MOSQUITTO" -h 2>/dev/null | head -1 | sed 's/^mosquitto version //')"
export MACHINE STARTED TREE="$(git describe --always --dirty 2>/dev/null || echo unknown)"
export SETTINGS="BENCH_SECONDS=$SECONDS_FULL BENCH_LATENCY_SECONDS=$SECONDS_HALF BENCH_DEVICES=$DEVICES"
# shellcheck disable=SC2086
python3 - "$DOC" "$RESULTS" ${BENCH_REPORT:-} <<'EOF'
import json, os, statistics, sys

doc = sys.argv[1]
results = [json.loads(l) for f in sys.argv[2:] for l in open(f) if l.strip()]
failures = [r for r in results if "error" in r]
results = [r for r in results if "error" not in r]
names = {"mosquitto": "mosquitto, persistence false", "mosquitto_persist": "mosquitto, persistence true",
         "fieldgate": "fieldgate, `ack = \"durable\"`", "fieldgate_received": "fieldgate, `ack = \"received\"`"}
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def k(x):
    return "—" if x is None else f"{x / 1e3:.1f} k"
def ms(x):
    return "—" if x is None else f"{x:.2f}"
by = {}
for r in results:
    by.setdefault((r.get("qos", 1), r["connections"], r["target"]), []).append(r)
lines = ["| QoS | connections | broker | runs | sustained rows/s | ratio to mosquitto | PUBACK/s (QoS 0: sent/s) | PUBACK p50 / p99 at half load (ms) | lost | CPU cores | peak RSS | journal entries per commit |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|"]
for qos, conns in sorted({(q, c) for q, c, _ in by}, key=lambda x: (-x[0], x[1])):
    base = med([r["rate"] for r in by.get((qos, conns, "mosquitto"), [])])
    for t in ["mosquitto", "mosquitto_persist", "fieldgate", "fieldgate_received"]:
        rs = by.get((qos, conns, t))
        if not rs:
            continue
        rate = med([r["rate"] for r in rs])
        p50 = med([(r["puback_half"] or {}).get("p50_ms") for r in rs])
        p99 = med([(r["puback_half"] or {}).get("p99_ms") for r in rs])
        epc = med([r.get("entries_per_commit") for r in rs])
        lines.append(
            f"| {qos} | {conns} | {names[t]} | {len(rs)} | **{k(rate)}** | {'—' if t == 'mosquitto' or not base else f'{rate / base:.2f}×'} | "
            f"{k(med([r['puback_rate'] for r in rs]))} | {ms(p50)} / {ms(p99)} | {sum(max(r['lost'], 0) for r in rs):,} | "
            f"{med([r['cpu_cores'] for r in rs]):.2f} | {med([r['peak_rss_bytes'] for r in rs]) / 2**20:.0f} MiB | "
            f"{'—' if epc is None else f'{epc:.1f}'} |")
table = "\n".join(lines)
if failures:
    table += "\n\nRuns that could not be measured (left out above): " + "; ".join(
        f"{f['target']}, {f['connections']} connections, QoS {f.get('qos', 1)}, run {f['rep']}: {f['error'].strip()}" for f in failures)
print(table)
if not doc:
    sys.exit(0)
block = (f"<!-- bench-ingest.sh:begin -->\nRun {os.environ['STARTED']} on {os.environ['MACHINE']}; tree `{os.environ['TREE']}`; "
         f"`{os.environ['SETTINGS']}`; medians of the runs.\n\n{table}\n<!-- bench-ingest.sh:end -->")
import subprocess
subprocess.run(["scripts/doc-section.py", doc,
                "bench-ingest.sh", "Broker ingest: `scripts/bench-ingest.sh`"], input=block, text=True, check=True)
print(f"bench-ingest.sh: {doc} updated")
EOF
