#!/usr/bin/env bash
# End-to-end benchmark: simulated devices → fieldgate → a cloud mosquitto → a subscriber,
# against mosquitto alone relaying the same load to one subscriber. Everything runs on
# loopback, on ports picked free at run time; every wait is bounded; a trap stops every
# process this script started.
#
# Scenarios (BENCH_SCENARIOS, in this order by default):
#   baseline      simulate → mosquitto → bench_sub
#   filter        simulate → fieldgate (WHERE temp > 0, every row passes) → durable queue
#                 → MQTT sink, one message per row → cloud mosquitto → bench_sub
#   filter_array  the same with the sink's `format = "json_array"`, `batch_max = 50`
#                 (100 rows of ~105 bytes exceed the sink client's 10 KiB packet limit)
#   window        tumbling 10 s average by device over BENCH_WINDOW_DEVICES devices
#   rules         BENCH_RULES rules on one stream, rule i: WHERE device = 'dev-<i>'
#
# Each run has a full-rate phase (simulate --rate 0 for BENCH_SECONDS), which gives the
# sustained rate, and then (not for `window`) a phase at half that rate for
# BENCH_LATENCY_SECONDS, which gives the p50/p99 latency from the device's send time
# (`sent_us` in the payload) to the row's arrival at the subscriber. Each scenario runs
# BENCH_REPEAT times; the table shows medians. The results replace the part of
# docs/benchmarks.md between `<!-- bench.sh:begin -->` and `<!-- bench.sh:end -->`.
#
# Sustained rate:
#   baseline, filter, filter_array: rows that reached the subscriber / (arrival of the last
#     row − start of the load), so a queue still draining after the load counts against it;
#   window: rows the rule took / (moment it had taken the last row − start of the load);
#   rules: rows the stream decoded / (moment every rule had taken every row − start).
# Peak RSS is VmHWM of the fieldgate process (of mosquitto for the baseline) over both
# phases, with in brackets the largest RssAnon sampled every 100 ms during the full-rate
# phase (MiB): the memory the process allocated, without the pages of its executable; CPU is its user + system time during the full-rate phase / that phase's wall time.
#
# Environment (defaults in brackets):
#   BENCH_SCENARIOS ["baseline filter filter_array window rules"]  BENCH_REPEAT [3]
#   BENCH_REP_START [1] (number of the first repetition, to add runs to earlier ones)
#   BENCH_SECONDS [10]  BENCH_LATENCY_SECONDS [10]  BENCH_DRAIN_TIMEOUT [120] (seconds)
#   BENCH_DEVICES [1000]  BENCH_WINDOW_DEVICES [10000]  BENCH_CONNECTIONS [4]
#   BENCH_RULES [100]  BENCH_QOS [1] (devices' publishes)
#   BENCH_BATCH_DELAY, BENCH_COMMIT_DELAY [gateway defaults: 0ms, 0ms] ([ingest] batch_delay,
#                   [queue] commit_delay)
#   BENCH_ACK [gateway default: durable] ([broker] ack: durable or received)
#   BENCH_WAIT_OTHERS [1800] (seconds to wait while other benchmarks run; 0: do not wait)
#   BENCH_PROFILE [0] (1: after the measured runs, one more run each of `filter` and
#                   `rules` under `perf record -g`; reports in the output directory)
#   BENCH_DOC [docs/benchmarks.md] (empty: do not touch the doc)
#   BENCH_OUT [target/bench-e2e/<time>] (raw results: results.jsonl, logs)
#   BENCH_BUILD [1] (0: use the binaries as built)  CARGO_TARGET_DIR [target]
#   BENCH_BIN_DIR [$CARGO_TARGET_DIR/release] (where fieldgate and bench_sub are taken from)
#   BENCH_REPORT (results.jsonl files of earlier runs: print the table and rewrite the doc
#                 from them without running anything; BENCH_REPORT_STARTED names their date)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

SCENARIOS=${BENCH_SCENARIOS:-baseline filter filter_array window rules}
REPEAT=${BENCH_REPEAT:-3}
REP_START=${BENCH_REP_START:-1}
SECONDS_FULL=${BENCH_SECONDS:-10}
SECONDS_HALF=${BENCH_LATENCY_SECONDS:-10}
DRAIN_TIMEOUT=${BENCH_DRAIN_TIMEOUT:-120}
DEVICES=${BENCH_DEVICES:-1000}
WINDOW_DEVICES=${BENCH_WINDOW_DEVICES:-10000}
CONNECTIONS=${BENCH_CONNECTIONS:-4}
RULES=${BENCH_RULES:-100}
QOS=${BENCH_QOS:-1}
WAIT_OTHERS=${BENCH_WAIT_OTHERS:-1800}
PROFILE=${BENCH_PROFILE:-0}
DOC=${BENCH_DOC-docs/benchmarks.md}
OUT=${BENCH_OUT:-$ROOT/target/bench-e2e/$(date -u +%Y%m%dT%H%M%SZ)}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BENCH_BIN_DIR:-$TARGET/release}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

for tool in curl python3 "$MOSQUITTO"; do
  command -v "$tool" >/dev/null 2>&1 || { echo "bench.sh: $tool is missing" >&2; exit 1; }
done
BENCH_NAME=bench.sh
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh
build=0
[ "${BENCH_BUILD:-1}" = 1 ] && [ -z "${BENCH_REPORT:-}" ] && build=1
bench_binaries "$build"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"

# Keeps the largest RssAnon (bytes: the process's own memory, without the pages of its
# executable) seen every 100 ms in a file; stops when the process does.
sample_anon() { # pid file
  local max=0 k v _
  while [ -r "/proc/$1/status" ]; do
    while read -r k v _; do
      if [ "$k" = RssAnon: ] && [ "$((v * 1024))" -gt "$max" ]; then
        max=$((v * 1024))
        echo "$max" >"$2"
      fi
    done 2>/dev/null <"/proc/$1/status"
    sleep 0.1
  done
}

# Another benchmark would distort both: wait (bounded) until none runs.
OTHERS_PATTERN='bench-modbus.sh|bench-drain.sh|bench-ingest.sh|cargo bench|criterion'
wait_for_others() { # -> RUN_NOTE
  local waited=0
  RUN_NOTE=""
  [ "$WAIT_OTHERS" -gt 0 ] || return 0
  while pgrep -f "$OTHERS_PATTERN" >/dev/null; do
    if [ "$waited" -ge "$WAIT_OTHERS" ]; then
      echo "  other benchmarks still running after ${WAIT_OTHERS}s; measuring anyway" >&2
      RUN_NOTE="other benchmarks were running when it started"
      return 0
    fi
    [ "$waited" -eq 0 ] && echo "  waiting for other benchmarks to finish: $(pgrep -fa "$OTHERS_PATTERN" | head -3 | tr '\n' ';')"
    sleep 30
    waited=$((waited + 30))
  done
  [ "$waited" -eq 0 ] || RUN_NOTE="started after waiting ${waited}s for other benchmarks to end"
}

# ---------------------------------------------------------------- the pieces
simulate() { # port devices rate seconds -> JSON report on stdout
  "$BIN/fieldgate" simulate --broker "127.0.0.1:$1" --devices "$2" \
    --connections "$CONNECTIONS" --rate "$3" --duration "$4s" --qos "$QOS" \
    --topic 'sensors/{device}/telemetry' --json
}

metrics() { curl -sf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics"; }

# Sum of every series of one metric (optionally only those whose labels contain $2).
metric() {
  awk -v m="$1" -v l="${2:-}" '
    index($0, m) == 1 && (substr($0, length(m) + 1, 1) == "{" || substr($0, length(m) + 1, 1) == " ") \
      && (l == "" || index($0, l) > 0) { s += $NF }
    END { printf "%.0f\n", s }' <<<"$METRICS"
}

write_gateway_config() { # dir scenario
  local dir=$1 scenario=$2 sink_extra=""
  local ingest_extra="" queue_extra="" broker_extra=""
  [ -z "${BENCH_ACK:-}" ] || broker_extra+="ack = \"$BENCH_ACK\""
  [ -z "${BENCH_BATCH_DELAY:-}" ] || ingest_extra="batch_delay = \"$BENCH_BATCH_DELAY\""
  [ -z "${BENCH_COMMIT_DELAY:-}" ] || queue_extra="commit_delay = \"$BENCH_COMMIT_DELAY\""
  [ "$scenario" = filter_array ] && sink_extra=$'format = "json_array"\nbatch_max = 50'
  mkdir -p "$dir/rules"
  cat >"$dir/fieldgate.toml" <<EOF
gateway_id = "bench"
data_dir = "data"
rules_dir = "rules"

[broker]
listen = "127.0.0.1:$GW_PORT"
$broker_extra

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[log]
level = "warn"

[ingest]
$ingest_extra

[queue]
$queue_extra

[sinks.cloud]
type = "mqtt"
host = "127.0.0.1"
port = $CLOUD_PORT
$sink_extra
EOF
  local stream="CREATE STREAM t (device STRING, ts BIGINT, sent_us BIGINT, temp DOUBLE) WITH (DATASOURCE = 'sensors/+/telemetry', TIMESTAMP = 'ts', LATENESS = '1s');"
  {
    echo "$stream"
    case $scenario in
      filter | filter_array)
        echo "CREATE RULE f INTO cloud AS SELECT device, sent_us, temp FROM t WHERE temp > 0;" ;;
      window)
        echo "CREATE RULE w INTO cloud AS SELECT device, window_start, window_end, count(*) AS readings, avg(temp) AS avg_temp FROM t GROUP BY device, TUMBLINGWINDOW(ss, 10);" ;;
      rules)
        for ((i = 0; i < RULES; i++)); do
          echo "CREATE RULE r$i INTO cloud AS SELECT device, sent_us, temp FROM t WHERE device = 'dev-$i';"
        done ;;
    esac
  } >"$dir/rules/bench.sql"
}

start_gateway() { # dir -> pid in GW_PID
  (cd "$1" && exec "$BIN/fieldgate" run --config fieldgate.toml) >"$1/fieldgate.log" 2>&1 &
  GW_PID=$!
  PIDS+=("$GW_PID")
  local i
  for ((i = 0; i < 300; i++)); do
    curl -sf --max-time 2 "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && return 0
    kill -0 "$GW_PID" 2>/dev/null || { echo "bench.sh: fieldgate exited:" >&2; tail -20 "$1/fieldgate.log" >&2; return 1; }
    sleep 0.1
  done
  echo "bench.sh: fieldgate not ready within 30 s" >&2
  return 1
}

# Waits (bounded) until the gateway has processed everything it received: every rule has
# taken every decoded row, and the cloud queue is empty. Prints the moment (µs) the rules
# were done (the first 200 ms poll that saw their final count), then the moment the queue
# was seen empty.
wait_gateway_done() { # scenario
  local rules_per_row=1 deadline rules_done="" received=0 before rows taken=0 was changed entries
  [ "$1" = rules ] && rules_per_row=$RULES
  deadline=$(($(date +%s) + DRAIN_TIMEOUT))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    METRICS=$(metrics || true)
    before=$received
    received=$(metric fieldgate_mqtt_messages_received_total)
    rows=$(metric fieldgate_stream_rows_total)
    was=$taken
    taken=$(metric fieldgate_rule_records_in_total)
    [ "$taken" -eq "$was" ] || changed=$(now_us)
    entries=$(metric fieldgate_queue_entries)
    # Done once the broker forwards nothing more and every rule took every row.
    if [ -z "$rules_done" ] && [ "$received" -gt 0 ] && [ "$received" -eq "$before" ] \
      && [ "$rows" -ge "$received" ] && [ "$taken" -ge $((rows * rules_per_row)) ]; then
      rules_done=$changed # the first poll that saw the final count
    fi
    if [ -n "$rules_done" ] && [ "$entries" -eq 0 ]; then
      echo "$rules_done $(now_us)"
      return 0
    fi
    sleep 0.2
  done
  echo "  gateway not drained within ${DRAIN_TIMEOUT}s (received $received, rows $rows, taken $taken, queued $entries)" >&2
  echo "${rules_done:-$(now_us)} $(now_us)"
}

# ---------------------------------------------------------------- one run
SUMMARY_PY='
import json, sys
r = json.loads(sys.stdin.read())
lat = ""
if r.get("p50_us") is not None:
    lat = " p50 %.2f ms p99 %.2f ms" % (r["p50_us"] / 1e3, r["p99_us"] / 1e3)
print("  %s #%d: %s msgs/s (load offered %s/s, lost %d)%s, rss %.1f MiB, cpu %.2f cores" % (
    r["scenario"], r["rep"], format(round(r["rate"]), ","), format(round(r["sim_rate"]), ","),
    r["lost"], lat, r["peak_rss_bytes"] / 2**20, r["cpu_cores"]))
'
run_one() { # scenario repetition [perf]
  local scenario=$1 rep=$2 perf=${3:-}
  local dir="$OUT/$scenario-$rep${perf:+-perf}"
  local devices=$DEVICES
  [ "$scenario" = window ] && devices=$WINDOW_DEVICES
  mkdir -p "$dir"
  wait_for_others
  local load_before
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  CLOUD_PORT=$(free_port)
  start_mosquitto "$dir" "$CLOUD_PORT"
  local proc_pid load_port
  if [ "$scenario" = baseline ]; then
    proc_pid=$MOSQ_PID
    load_port=$CLOUD_PORT
  else
    GW_PORT=$(free_port) ADMIN_PORT=$(free_port)
    write_gateway_config "$dir" "$scenario"
    start_gateway "$dir"
    proc_pid=$GW_PID
    load_port=$GW_PORT
  fi
  local sub_wait=$((SECONDS_FULL + DRAIN_TIMEOUT + 30))
  : >"$dir/peak-anon"
  sample_anon "$proc_pid" "$dir/peak-anon" &
  local sampler=$!
  PIDS+=("$sampler")

  # Full rate.
  start_sub "$dir" sub-full "$CLOUD_PORT" "$sub_wait"
  local sub_pid=$SUB_PID perf_pid=""
  if [ -n "$perf" ]; then
    perf record -F 499 -g -p "$proc_pid" -o "$dir/perf.data" -- sleep "$SECONDS_FULL" \
      >"$dir/perf.log" 2>&1 &
    perf_pid=$!
    PIDS+=("$perf_pid")
  fi
  local cpu0 t0 sim done_rules=0 done_queue=0 cpu1 t1
  cpu0=$(cpu_seconds "$proc_pid")
  t0=$(now_us)
  sim=$(simulate "$load_port" "$devices" 0 "$SECONDS_FULL")
  if [ "$scenario" != baseline ]; then
    read -r done_rules done_queue < <(wait_gateway_done "$scenario")
  fi
  cpu1=$(cpu_seconds "$proc_pid")
  t1=$(now_us)
  if [ "$scenario" = window ]; then
    stop "$sub_pid" 2 # window results arrive only as windows close: not waited for
  else
    wait_sub "$sub_pid" "$sub_wait"
  fi
  [ -z "$perf_pid" ] || wait "$perf_pid" 2>/dev/null || true
  # The sampler forks `sleep` ten times a second: not while latency is measured.
  stop "$sampler" 2
  : >"$dir/metrics-full.txt"
  [ "$scenario" = baseline ] || metrics >"$dir/metrics-full.txt" || true

  # Half rate, for latency.
  local half_rate=0 sim_half="" cpu2=0 cpu3=0 t2=0 t3=0
  if [ "$scenario" != window ]; then
    half_rate=$(python3 - "$dir/sub-full.json" "$dir/metrics-full.txt" "$t0" "$done_rules" "$scenario" <<'EOF'
import json, sys
sub, t0, done, scenario = json.load(open(sys.argv[1])), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
if scenario == "rules":
    rows = sum(float(l.rsplit(" ", 1)[1]) for l in open(sys.argv[2]) if l.startswith("fieldgate_stream_rows_total"))
    rate = rows / max((done - t0) / 1e6, 1e-3)
else:
    rate = sub["rows"] / max((sub["last_arrival_us"] - t0) / 1e6, 1e-3)
print(max(int(rate / 2), 1))
EOF
)
    start_sub "$dir" sub-half "$CLOUD_PORT" "$((SECONDS_HALF + DRAIN_TIMEOUT + 30))"
    sub_pid=$SUB_PID
    cpu2=$(cpu_seconds "$proc_pid")
    t2=$(now_us)
    sim_half=$(simulate "$load_port" "$devices" "$half_rate" "$SECONDS_HALF")
    cpu3=$(cpu_seconds "$proc_pid")
    t3=$(now_us)
    [ "$scenario" = baseline ] || wait_gateway_done "$scenario" >/dev/null
    wait_sub "$sub_pid" "$((SECONDS_HALF + DRAIN_TIMEOUT + 30))"
  fi
  local rss
  rss=$(peak_rss_bytes "$proc_pid")
  [ "$scenario" = baseline ] || stop "$GW_PID" 20
  stop "$MOSQ_PID" 5

  PEAK_ANON=$(cat "$dir/peak-anon") RUN_NOTE=$RUN_NOTE python3 - "$dir" "$scenario" "$rep" "$sim" "$sim_half" "$t0" "$t1" "$done_rules" "$done_queue" \
    "$cpu0" "$cpu1" "$t2" "$t3" "$cpu2" "$cpu3" "$half_rate" "$rss" "$load_before" \
    "$(cut -d' ' -f1 /proc/loadavg)" "$devices" "${perf:+1}" >>"$RESULTS" <<'EOF'
import json, os, sys
(d, scenario, rep, sim, sim_half, t0, t1, done_rules, done_queue, cpu0, cpu1, t2, t3, cpu2, cpu3,
 half_rate, rss, load_before, load_after, devices, perf) = sys.argv[1:]
t0, t1, t2, t3 = int(t0), int(t1), int(t2), int(t3)
done_rules, done_queue = int(done_rules), int(done_queue)
sim = json.loads(sim)
def load(name):
    try:
        return json.load(open(os.path.join(d, name)))
    except (OSError, ValueError):
        return None
full, half = load("sub-full.json"), load("sub-half.json")
m = {}
for line in open(os.path.join(d, "metrics-full.txt")):
    if line and not line.startswith("#"):
        parts = line.rsplit(" ", 1)
        if len(parts) == 2:
            key = parts[0].split("{")[0]
            try:
                m[key] = m.get(key, 0) + float(parts[1])
            except ValueError:
                pass
r = {"scenario": scenario, "rep": int(rep), "profiled": perf == "1", "devices": int(devices),
     "sent": sim["sent"], "acknowledged": sim["acknowledged"], "sim_seconds": sim["seconds"],
     "sim_rate": sim["rate"], "cloud_rows": full["rows"] if full else None,
     "cloud_messages": full["messages"] if full else None}
if scenario in ("baseline", "filter", "filter_array"):
    end = full["last_arrival_us"] if full and full["rows"] else t1
    r["rate"] = (full["rows"] if full else 0) / ((end - t0) / 1e6)
    r["lost"] = sim["sent"] - (full["rows"] if full else 0)
elif scenario == "window":
    r["rate"] = m.get("fieldgate_rule_records_in_total", 0) / ((done_rules - t0) / 1e6)
    r["lost"] = sim["sent"] - int(m.get("fieldgate_rule_records_in_total", 0))
else:
    rows = m.get("fieldgate_stream_rows_total", 0)
    r["rate"] = rows / ((done_rules - t0) / 1e6)
    r["lost"] = sim["sent"] - int(rows)
    r["rule_rows_in"] = m.get("fieldgate_rule_records_in_total", 0)
if scenario != "baseline":
    r["received"] = m.get("fieldgate_mqtt_messages_received_total")
    r["delivered"] = m.get("fieldgate_sink_delivered_total")
    r["rules_done_s"] = (done_rules - t0) / 1e6
    r["queue_empty_s"] = (done_queue - t0) / 1e6
r["cpu_cores"] = (float(cpu1) - float(cpu0)) / ((t1 - t0) / 1e6)
r["cpu_us_per_msg"] = (float(cpu1) - float(cpu0)) * 1e6 / max(sim["sent"] - max(r["lost"], 0), 1)
if half:
    r["half_rate"] = int(half_rate)
    r["half_sim_rate"] = json.loads(sim_half)["rate"]
    r["half_cloud_rows"] = half["rows"]
    r["p50_us"], r["p90_us"], r["p99_us"], r["max_us"] = half["p50_us"], half["p90_us"], half["p99_us"], half["max_us"]
    r["cpu_cores_half"] = (float(cpu3) - float(cpu2)) / ((t3 - t2) / 1e6)
r["peak_rss_bytes"] = int(rss)
r["peak_anon_bytes"] = int(os.environ.get("PEAK_ANON") or 0)
r["load_before"], r["load_after"] = float(load_before), float(load_after)
r["shared"] = os.environ.get("RUN_NOTE", "")
print(json.dumps(r))
EOF
  tail -1 "$RESULTS" | python3 -c "$SUMMARY_PY"
  if [ -n "$perf" ] && [ -s "$dir/perf.data" ]; then
    perf report -i "$dir/perf.data" --no-children --sort symbol -g none --stdio 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -60 >"$OUT/profile-$scenario.txt" || true
    perf report -i "$dir/perf.data" --no-children --sort comm -g none --stdio 2>/dev/null \
      | grep -v '^#' | grep -v '^$' | head -20 >"$OUT/profile-$scenario-threads.txt" || true
    echo "  profile: $OUT/profile-$scenario.txt"
  fi
  PIDS=()
}

# ---------------------------------------------------------------- main
STARTED=$(date -u +'%Y-%m-%d %H:%M UTC')
if [ -n "${BENCH_REPORT:-}" ]; then
  # Only the table and the doc, from results of earlier runs (one or more results.jsonl).
  cat $BENCH_REPORT >"$RESULTS"
  STARTED="${BENCH_REPORT_STARTED:-$STARTED}"
else
  echo "bench.sh: results in $OUT"
  for ((rep = REP_START; rep < REP_START + REPEAT; rep++)); do
    for s in $SCENARIOS; do
      run_one "$s" "$rep"
    done
  done
  if [ "$PROFILE" = 1 ]; then
    for s in filter rules; do
      run_one "$s" 1 perf
    done
  fi
fi

# ---------------------------------------------------------------- table and doc
MACHINE_CPU=$(awk -F': ' '/^model name/ { m = $2 } /^cpu family/ { f = $2 } /^model\t/ { n = $2 }
  /^flags/ { a = ($2 ~ /avx512f/) ? ", AVX-512" : "" } END { printf "%s (family %s model %s%s)", m, f, n, a }' /proc/cpuinfo)
export MACHINE_CPU STARTED
export MACHINE_NPROC=$(nproc)
export TREE=$(git describe --always --dirty 2>/dev/null || echo unknown)
export MACHINE_MEM=$(free -g | awk '/^Mem:/ { printf "%s GiB, %s GiB available at the end", $2, $7 }')
export MACHINE_OS="$(. /etc/os-release && echo "$PRETTY_NAME"), Linux $(uname -r)"
export MACHINE_MOSQ=$("$MOSQUITTO" -h 2>/dev/null | head -1 | sed 's/^mosquitto version //')
export MACHINE_RUSTC=$(rustc --version 2>/dev/null | cut -d' ' -f2)
export BENCH_RULES_COUNT=$RULES
export SETTINGS="BENCH_SECONDS=$SECONDS_FULL BENCH_LATENCY_SECONDS=$SECONDS_HALF BENCH_REPEAT=$REPEAT BENCH_DEVICES=$DEVICES BENCH_WINDOW_DEVICES=$WINDOW_DEVICES BENCH_CONNECTIONS=$CONNECTIONS BENCH_RULES=$RULES BENCH_QOS=$QOS"
python3 - "$RESULTS" "$DOC" <<'EOF'
import json, os, statistics, sys

results = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
doc = sys.argv[2]
runs = [r for r in results if not r["profiled"]]
order = ["baseline", "filter", "filter_array", "window", "rules"]
names = {
    "baseline": "(a) mosquitto alone, one subscriber",
    "filter": "(b) filter → queue → cloud MQTT, one message per row",
    "filter_array": "(b′) the same, sink `format = \"json_array\"`, `batch_max = 50`",
    "window": "(c) tumbling 10 s avg by device",
    "rules": f"(d) {os.environ['BENCH_RULES_COUNT']} rules on one stream (rate in)",
}
targets = {  # scenario: (rate, ratio to baseline, p99 ms, RSS MiB)
    "filter": (300_000, 1.5, 5.0, 64),
    "filter_array": (300_000, 1.5, 5.0, 64),
    "window": (300_000, None, None, 150),
    "rules": (100_000, None, None, None),
}

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

by = {}
for r in runs:
    by.setdefault(r["scenario"], []).append(r)
base = med([r["rate"] for r in by.get("baseline", [])])

def fmt_rate(x):
    return "—" if x is None else (f"{x / 1e6:.2f} M" if x >= 1e6 else f"{x / 1e3:.0f} k")

def fmt_ms(us):
    return "—" if us is None else f"{us / 1e3:.2f} ms"

def short(have, want, higher_is_better=True):
    if higher_is_better:
        return "met" if have >= want else f"**missed, {want / have:.2f}× short**" if have else "**missed**"
    return "met" if have <= want else f"**missed, {have / want:.2f}× over**"

rows, verdicts = [], []
for s in order:
    rs = by.get(s)
    if not rs:
        continue
    rate = med([r["rate"] for r in rs])
    ratio = rate / base if base else None
    p50 = med([r.get("p50_us") for r in rs])
    p99 = med([r.get("p99_us") for r in rs])
    rss = med([r["peak_rss_bytes"] for r in rs]) / 2**20
    anon = med([r.get("peak_anon_bytes") or None for r in rs])
    cpu = med([r["cpu_cores"] for r in rs])
    cpu_msg = med([r["cpu_us_per_msg"] for r in rs])
    lost = sum(max(r["lost"], 0) for r in rs)
    sent = sum(r["sent"] for r in rs)
    spread = f"{min(r['rate'] for r in rs) / 1e3:.0f}–{max(r['rate'] for r in rs) / 1e3:.0f} k"
    half = med([r.get("half_rate") for r in rs])
    rows.append(
        f"| {names[s]} | **{fmt_rate(rate)}** | {spread} | {fmt_rate(med([r['sim_rate'] for r in rs]))} | "
        f"{'—' if ratio is None or s == 'baseline' else f'{ratio:.2f}×'} | "
        f"{fmt_rate(half) if half else '—'} | {fmt_ms(p50)} | {fmt_ms(p99)} | {rss:.1f} MiB{f' ({anon / 2**20:.0f})' if anon else ''} | "
        f"{cpu:.2f} | {cpu_msg:.1f} | {lost:,} of {sent:,} |"
    )
    t = targets.get(s)
    if t:
        v = [f"≥ {t[0] / 1e3:.0f}k msgs/s: {short(rate, t[0])}"]
        if t[1] and ratio is not None:
            v.append(f"≥ {t[1]}× baseline: {short(ratio, t[1])} ({ratio:.2f}×)")
        if t[2] and p99 is not None:
            v.append(f"p99 ≤ {t[2]:.0f} ms at half load: {short(p99 / 1e3, t[2], False)}")
        if t[3]:
            v.append(f"RSS ≤ {t[3]} MB: {short(rss * 2**20 / 1e6, t[3], False)} ({rss * 2**20 / 1e6:.0f} MB)")
        verdicts.append(f"- {names[s]}: " + "; ".join(v))

header = ("| scenario | msgs/s (median) | range | offered | × baseline | half rate | p50 | p99 | peak RSS (anon) | CPU (cores) | CPU µs/msg | lost |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
table = header + "\n" + "\n".join(rows)
print()
print(table)
print()
print("\n".join(verdicts))

def anon_of(r):
    a = r.get("peak_anon_bytes")
    return f" ({a / 2**20:.0f})" if a else ""

per_run = ["| scenario | run | msgs/s | load offered | p50 | p99 | RSS | CPU | load avg before → after |", "|---|---|---|---|---|---|---|---|---|"]
for s in order:
    for r in sorted(by.get(s, []), key=lambda r: r["rep"]):
        per_run.append(
            f"| {s} | {r['rep']} | {r['rate']:,.0f} | {r['sim_rate']:,.0f} | {fmt_ms(r.get('p50_us'))} | "
            f"{fmt_ms(r.get('p99_us'))} | {r['peak_rss_bytes'] / 2**20:.1f} MiB{anon_of(r)} | {r['cpu_cores']:.2f} | "
            f"{r['load_before']:.1f} → {r['load_after']:.1f} |")

if not doc:
    sys.exit(0)
env = os.environ
notes = [f"{r['scenario']} #{r['rep']} {r['shared']}" for r in runs if r.get("shared")]
loads = [x for r in runs for x in (r["load_before"], r["load_after"])]
section = f"""<!-- bench.sh:begin -->
<!-- Written by scripts/bench.sh; everything up to the end marker is replaced by the next run. -->
Run of {env['STARTED']} on the tree at `{env['TREE']}` (release profile): `{env['SETTINGS']}`.

| machine | |
|---|---|
| CPU | {env['MACHINE_CPU']}, `nproc` {env['MACHINE_NPROC']} |
| memory | {env['MACHINE_MEM']} |
| OS | {env['MACHINE_OS']} |
| software | rustc {env['MACHINE_RUSTC']}, mosquitto {env['MACHINE_MOSQ']} |
| load average | 1 min, before and after each run: {min(loads):.2f}–{max(loads):.2f} |
| notes | {'; '.join(notes) if notes else 'no other benchmark ran during the measurements (checked before each run)'} |

Medians of the runs; "range" is the lowest and highest run; "offered" is the rate at which
the broker acknowledged the simulated devices' publishes. p50/p99: send time on the device
to arrival at the subscriber, at half the run's own sustained rate ("half rate"). Peak RSS
and CPU are fieldgate's (mosquitto's for (a)); in brackets, the largest anonymous RSS seen
(sampled every 100 ms during the full-rate phase, MiB): the memory the process allocated, without the pages of its
executable that it has mapped. CPU in cores from the start of the load until
the gateway had drained, and in µs per message delivered. "lost": messages the broker
acknowledged to the devices that never reached the subscriber (the rule, for (c) and (d)),
over all runs of the full-rate phase.

{table}

Targets:

{chr(10).join(verdicts)}

<details><summary>Every run</summary>

{chr(10).join(per_run)}

</details>
<!-- bench.sh:end -->"""
import subprocess
subprocess.run(["scripts/doc-section.py", doc, "bench.sh", "End to end (`scripts/bench.sh`)"],
               input=section, text=True, check=True)
print(f"\n{doc}: results section rewritten")
EOF
