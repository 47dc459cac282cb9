#!/usr/bin/env bash
# Modbus polling benchmark: fieldgate (release build) polls D simulated Modbus TCP devices
# (tests/sim/modbus_sim.py --bench, pymodbus) of T u16 holding-register tags each, every
# I ms, for a fixed time after a warm-up. Measured over that time:
#   - tags/s polled: poll rows counted by a rule (1 s tumbling windows on the poll
#     timestamp) x T / seconds, cross-checked with the requests the simulators served;
#   - requests per poll (simulator requests / polls; the plan says ceil(T/125));
#   - fieldgate's CPU (utime+stime from /proc/<pid>/stat, % of one core), RSS and peak RSS;
#   - the simulators' CPU, and how busy the whole machine was (/proc/stat).
# The baseline, tests/sim/modbus_poll.py (pymodbus's asyncio client in one process),
# then polls the same devices and registers at the same interval and is measured the same
# way, so CPU per tag can be compared. Each configuration runs RUNS times; the summary
# gives medians.
#
# Everything listens on 127.0.0.1, on ports picked free at run time. Settings (env):
#   CONFIGS="4x2500@100 4x2500@25 4x125@5"  configurations, DEVICESxTAGS@INTERVAL_MS, space separated
#   RUNS=3 WARMUP=5 DURATION=20   runs per configuration; seconds of warm-up and measurement
#   SIMS=0                 simulator processes (devices are spread over them); 0: one per device
#   REPUBLISH=false        also publish every poll row as JSON to the embedded broker
#   BASELINE=1             0 skips the pymodbus client baseline
#   BUILD=1                0 skips `cargo build --release -p fieldgate`
#   CARGO_TARGET_DIR       where the release build goes (cargo's default: target)
#   FIELDGATE              the binary (default: $CARGO_TARGET_DIR/release/fieldgate)
#   OUT                    directory for configs, logs and results.tsv (default: a new temp dir)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

CONFIGS=${CONFIGS:-"4x2500@100 4x2500@25 4x125@5"}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-5}
DURATION=${DURATION:-20}
SIMS=${SIMS:-0}
REPUBLISH=${REPUBLISH:-false}
BASELINE=${BASELINE:-1}
BUILD=${BUILD:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
FIELDGATE=${FIELDGATE:-$TARGET_DIR/release/fieldgate}
OUT=${OUT:-$(mktemp -d /tmp/bench-modbus.XXXXXX)}
SIM="$ROOT/tests/sim/modbus_sim.py"
CLIENT="$ROOT/tests/sim/modbus_poll.py"
HZ=$(getconf CLK_TCK)
mkdir -p "$OUT"

BENCH_NAME=bench-modbus.sh
# shellcheck source=scripts/bench-common.sh
. scripts/bench-common.sh

die() {
  echo "bench-modbus: $*" >&2
  exit 1
}

if [ "$BUILD" = 1 ]; then
  echo "building fieldgate (release, $TARGET_DIR)"
  CARGO_TARGET_DIR="$TARGET_DIR" nice -n 10 cargo build --release -p fieldgate
fi
[ -x "$FIELDGATE" ] || die "no binary at $FIELDGATE"
python3 -c 'import pymodbus' 2>/dev/null || die "python3 with pymodbus >= 3.16 is needed"

# Waits (bounded) until file $1 has a line starting with $2; fails if pid $3 died.
wait_line() {
  local file=$1 word=$2 pid=$3 i
  for ((i = 0; i < 300; i++)); do
    grep -q "^$word" "$file" 2>/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || die "process $pid exited before $word; see $file"
    sleep 0.1
  done
  die "no $word within 30 s; see $file"
}

# utime+stime of a process, in clock ticks.
cpu_ticks() {
  local s
  s=$(cat "/proc/$1/stat")
  s=${s##*) }
  # shellcheck disable=SC2086
  set -- $s
  echo $((${12} + ${13}))
}

# Sum of cpu_ticks over pids.
cpu_ticks_sum() {
  local t=0 p
  for p in "$@"; do
    t=$((t + $(cpu_ticks "$p")))
  done
  echo "$t"
}

# Busy and total ticks of the whole machine, from the first line of /proc/stat.
machine_ticks() {
  local _cpu user nice system idle iowait irq softirq steal _rest
  read -r _cpu user nice system idle iowait irq softirq steal _rest </proc/stat
  echo "$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
}

kib() { awk -v k="$2" '$1 == k":" { print $2 }' "/proc/$1/status"; }

# Sleeps until the next whole second of the wall clock.
sleep_to_second() {
  local now=${EPOCHREALTIME/,/.}
  sleep "$(awk -v t="$now" 'BEGIN { printf "%.6f", int(t) + 1 - t }')"
}

# Starts SIMS simulators serving $1 registers; sets SIM_PIDS, SIM_PORTS, DEV_PORTS ($2 devices).
start_sims() {
  local regs=$1 devices=$2 dir=$3 n=$SIMS i p
  [ "$n" -gt 0 ] || n=$devices
  read -r -a SIM_PORTS <<<"$(free_ports "$n")"
  SIM_PIDS=()
  for ((i = 0; i < n; i++)); do
    python3 "$SIM" --bench "${SIM_PORTS[$i]}" "$regs" >"$dir/sim$i.log" 2>&1 &
    p=$!
    PIDS+=("$p")
    SIM_PIDS+=("$p")
  done
  for ((i = 0; i < n; i++)); do
    wait_line "$dir/sim$i.log" READY "${SIM_PIDS[$i]}"
  done
  DEV_PORTS=()
  for ((i = 0; i < devices; i++)); do
    DEV_PORTS+=("${SIM_PORTS[$((i % n))]}")
  done
}

signal_all() {
  local p
  for p in "$@"; do
    kill -USR1 "$p"
  done
}

write_gateway() {
  local dir=$1 devices=$2 tags=$3 interval=$4 ports i t last
  read -r -a ports <<<"$(free_ports 3)"
  mkdir -p "$dir/rules" "$dir/out" "$dir/data"
  last=$((tags - 1))
  {
    cat <<EOF
gateway_id = "bench"
data_dir = "$dir/data"
rules_dir = "$dir/rules"

[broker]
listen = "127.0.0.1:${ports[0]}"

[admin]
listen = "127.0.0.1:${ports[2]}"

[modbus]
republish = $REPUBLISH
EOF
    for ((i = 1; i <= devices; i++)); do
      cat <<EOF

[[modbus.devices]]
name = "plc$i"
transport = { type = "tcp", host = "127.0.0.1", port = ${DEV_PORTS[$((i - 1))]} }
unit_id = 1
timeout = "1s"
retries = 0
max_gap = 0

[[modbus.devices.groups]]
name = "g"
interval = "${interval}ms"
tags = [
EOF
      for ((t = 0; t < tags; t++)); do
        echo "  { name = \"t$t\", area = \"holding_register\", address = $t, type = \"u16\" },"
      done
      echo "]"
    done
    cat <<EOF

[sinks.local]
type = "file"
path = "$dir/out/{rule}.jsonl"
EOF
  } >"$dir/fieldgate.toml"
  for ((i = 1; i <= devices; i++)); do
    cat <<EOF
CREATE STREAM s$i (device STRING, timestamp BIGINT, t$last BIGINT, t${last}_quality STRING)
WITH (TYPE = 'modbus', DATASOURCE = 'plc$i/g', TIMESTAMP = 'timestamp',
      LATENESS = '1s', IDLE_TIMEOUT = '2s');

CREATE RULE polls$i INTO local AS
SELECT device, count(*) AS polls, min(t$last) AS vmin, max(t$last) AS vmax,
       min(t${last}_quality) AS qmin, max(t${last}_quality) AS qmax, window_start
FROM s$i GROUP BY device, TUMBLINGWINDOW(ss, 1);

EOF
  done >"$dir/rules/bench.sql"
  ADMIN_PORT=${ports[2]}
}

# The `... T <time>` line of a log nearest to time $2: prints the line.
line_at() {
  python3 - "$1" "$2" "$3" <<'EOF'
import sys
path, at, word = sys.argv[1], float(sys.argv[2]), sys.argv[3]
lines = [l.split() for l in open(path) if l.startswith(word)]
best = min(lines, key=lambda f: abs(float(f[f.index("T") + 1]) - at))
print(" ".join(best))
EOF
}

# Field $3 (a word) of line $1: the value after it.
field() { awk -v w="$2" '{ for (i = 1; i < NF; i++) if ($i == w) print $(i + 1) }' <<<"$1"; }

# Requests served by all simulators between times $1 and $2 (their own timestamps): "reqs regs secs".
sim_counts() {
  local a=$1 b=$2 i la lb reqs=0 regs=0 secs=0
  for ((i = 0; i < ${#SIM_PIDS[@]}; i++)); do
    la=$(line_at "$RUN/sim$i.log" "$a" REQS)
    lb=$(line_at "$RUN/sim$i.log" "$b" REQS)
    reqs=$((reqs + $(field "$lb" REQS) - $(field "$la" REQS)))
    regs=$((regs + $(field "$lb" REGS) - $(field "$la" REGS)))
    secs=$(awk -v x="$(field "$lb" T)" -v y="$(field "$la" T)" -v s="$secs" 'BEGIN { print s + x - y }')
  done
  echo "$reqs $regs $(awk -v s="$secs" -v n="${#SIM_PIDS[@]}" 'BEGIN { print s / n }')"
}

RESULTS="$OUT/results.tsv"
printf 'config\tmode\trun\tsecs\tpolls\ttags_per_s\ttarget_tags_per_s\tsim_reqs\treqs_per_poll\tsim_tags_per_s\tcpu_pct\trss_mib\tpeak_rss_mib\tsim_cpu_pct\tmachine_busy_pct\tother_busy_pct\tbad\n' >"$RESULTS"

# One measured interval: samples the measured pid and the simulators at two whole-second
# marks DURATION apart. Sets A B (wall times), CPU (measured pid's ticks), SIMCPU, BUSY, TOTAL.
measure() {
  local pid=$1 c0 s0 m0 c1 s1 m1
  shift
  sleep "$WARMUP"
  sleep_to_second
  A=${EPOCHREALTIME/,/.}
  signal_all "${SIM_PIDS[@]}" "$@"
  c0=$(cpu_ticks "$pid")
  s0=$(cpu_ticks_sum "${SIM_PIDS[@]}")
  m0=$(machine_ticks)
  sleep "$DURATION"
  B=${EPOCHREALTIME/,/.}
  signal_all "${SIM_PIDS[@]}" "$@"
  c1=$(cpu_ticks "$pid")
  s1=$(cpu_ticks_sum "${SIM_PIDS[@]}")
  m1=$(machine_ticks)
  RSS=$(kib "$pid" VmRSS)
  HWM=$(kib "$pid" VmHWM)
  CPU=$((c1 - c0))
  SIMCPU=$((s1 - s0))
  BUSY=$((${m1% *} - ${m0% *}))
  TOTAL=$((${m1#* } - ${m0#* }))
  sleep 0.5
}

# Writes one results row. Args: config mode run polls poll_secs bad tags devices interval
# (polls counted over poll_secs seconds; CPU is over B - A).
record() {
  local counts
  counts=$(sim_counts "$A" "$B")
  python3 - "$@" "$A" "$B" "$CPU" "$SIMCPU" "$BUSY" "$TOTAL" "$RSS" "$HWM" "$HZ" $counts >>"$RESULTS" <<'EOF'
import sys
(config, mode, run, polls, poll_secs, bad, tags, devices, interval, a, b, cpu, simcpu, busy,
 total, rss, hwm, hz, reqs, regs, simsecs) = sys.argv[1:]
secs = float(b) - float(a)
polls, tags, hz = int(polls), int(tags), int(hz)
ours = int(cpu) + int(simcpu)
row = [
    config, mode, run, f"{secs:.2f}", polls,
    f"{polls * tags / float(poll_secs):.0f}",
    f"{int(devices) * tags * 1000 / int(interval):.0f}",
    reqs,
    f"{int(reqs) / polls:.3f}" if polls else "nan",
    f"{int(regs) / float(simsecs):.0f}",
    f"{100 * int(cpu) / hz / secs:.1f}",
    f"{int(rss) / 1024:.1f}" if rss else "",
    f"{int(hwm) / 1024:.1f}" if hwm else "",
    f"{100 * int(simcpu) / hz / secs:.1f}",
    f"{200 * int(busy) / int(total):.1f}",
    f"{200 * (int(busy) - ours) / int(total):.1f}",
    bad,
]
print("\t".join(str(x) for x in row))
EOF
  tail -n 1 "$RESULTS" | awk -F'\t' '{ printf "  %-8s run %s: %s tags/s (target %s), %s req/poll, CPU %s%% of a core, RSS %s MiB, simulators %s%%, machine %s%% busy (others %s%%)\n", $2, $3, $6, $7, $9, $11, $12, $14, $15, $16 }'
}

run_fieldgate() {
  local config=$1 devices=$2 tags=$3 interval=$4 run=$5 fg i polls_bad
  RUN="$OUT/$config/fieldgate-$run"
  mkdir -p "$RUN"
  start_sims "$tags" "$devices" "$RUN"
  write_gateway "$RUN" "$devices" "$tags" "$interval"
  (cd "$RUN" && exec "$FIELDGATE" run --config "$RUN/fieldgate.toml") >"$RUN/fieldgate.log" 2>&1 &
  fg=$!
  PIDS+=("$fg")
  for ((i = 0; i < 300; i++)); do
    curl -fs "http://127.0.0.1:$ADMIN_PORT/readyz" >/dev/null 2>&1 && break
    kill -0 "$fg" 2>/dev/null || die "fieldgate exited; see $RUN/fieldgate.log"
    sleep 0.1
  done
  [ "$i" -lt 300 ] || die "fieldgate not ready within 30 s; see $RUN/fieldgate.log"
  measure "$fg"
  grep '^Threads' "/proc/$fg/status" >"$RUN/threads"
  # Let the last windows close (1 s lateness), then stop; the file sink flushes on exit.
  sleep 3
  kill -TERM "$fg"
  for ((i = 0; i < 300; i++)); do
    kill -0 "$fg" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$fg" 2>/dev/null && die "fieldgate did not stop within 30 s"
  wait "$fg" || die "fieldgate exited with an error; see $RUN/fieldgate.log"
  PIDS=("${SIM_PIDS[@]}")
  polls_bad=$(python3 - "$RUN/out" "$A" "$B" "$tags" <<'EOF'
import glob, json, math, sys
out, a, b, tags = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
want = ((tags - 1) * 31 + 7) & 0xFFFF
lo, hi = math.floor(a) * 1000, math.floor(b) * 1000
polls = bad = 0
for path in glob.glob(out + "/*.jsonl"):
    for line in open(path):
        r = json.loads(line)
        if lo <= r["window_start"] < hi:
            polls += r["polls"]
            if (r["vmin"], r["vmax"], r["qmin"], r["qmax"]) != (want, want, "ok", "ok"):
                bad += r["polls"]
print(polls, (hi - lo) // 1000, bad)
EOF
  )
  # shellcheck disable=SC2086
  record "$config" fieldgate "$run" $polls_bad "$tags" "$devices" "$interval"
  cleanup
}

run_baseline() {
  local config=$1 devices=$2 tags=$3 interval=$4 run=$5 cl la lb
  RUN="$OUT/$config/pymodbus-$run"
  mkdir -p "$RUN"
  start_sims "$tags" "$devices" "$RUN"
  python3 "$CLIENT" "$interval" "$tags" "${DEV_PORTS[@]}" >"$RUN/client.log" 2>&1 &
  cl=$!
  PIDS+=("$cl")
  wait_line "$RUN/client.log" READY "$cl"
  measure "$cl" "$cl"
  la=$(line_at "$RUN/client.log" "$A" POLLS)
  lb=$(line_at "$RUN/client.log" "$B" POLLS)
  record "$config" pymodbus "$run" "$(($(field "$lb" POLLS) - $(field "$la" POLLS)))" \
    "$(awk -v x="$(field "$lb" T)" -v y="$(field "$la" T)" 'BEGIN { print x - y }')" \
    "$(($(field "$lb" BAD) - $(field "$la" BAD)))" "$tags" "$devices" "$interval"
  cleanup
}

echo "results in $OUT"
for config in $CONFIGS; do
  [[ $config =~ ^([0-9]+)x([0-9]+)@([0-9]+)$ ]] || die "bad configuration $config (want DxT@MS)"
  devices=${BASH_REMATCH[1]} tags=${BASH_REMATCH[2]} interval=${BASH_REMATCH[3]}
  echo "$config: $devices devices x $tags tags every $interval ms, $((devices * tags * 1000 / interval)) tags/s asked; expect $(((tags + 124) / 125)) requests per poll"
  for ((run = 1; run <= RUNS; run++)); do
    run_fieldgate "$config" "$devices" "$tags" "$interval" "$run"
    if [ "$BASELINE" = 1 ]; then
      run_baseline "$config" "$devices" "$tags" "$interval" "$run"
    fi
  done
done

echo
echo "medians over $RUNS runs (CPU in % of one core; machine busy in % of one core, of 2 cores = 200%):"
python3 - "$RESULTS" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
def med(rs, k):
    return statistics.median(float(r[k]) for r in rs)
configs = list(dict.fromkeys(r["config"] for r in rows))
cols = ["tags_per_s", "reqs_per_poll", "cpu_pct", "rss_mib", "sim_cpu_pct", "other_busy_pct"]
print(f"{'config':<12} {'mode':<10} {'tags/s':>9} {'req/poll':>8} {'CPU %':>6} {'CPU %/100k tags/s':>17} {'RSS MiB':>8} {'sims %':>7} {'others %':>8} {'bad':>4}")
for c in configs:
    per = {}
    for mode in ("fieldgate", "pymodbus"):
        rs = [r for r in rows if r["config"] == c and r["mode"] == mode]
        if not rs:
            continue
        # CPU per 100k tags/s: median over runs of each run's own ratio.
        per_tag = statistics.median(float(r["cpu_pct"]) / float(r["tags_per_s"]) * 1e5 for r in rs)
        per[mode] = per_tag
        rss = f"{med(rs, 'rss_mib'):.1f}" if all(r["rss_mib"] for r in rs) else ""
        bad = sum(int(r["bad"]) for r in rs)
        print(f"{c:<12} {mode:<10} {med(rs, 'tags_per_s'):>9.0f} {med(rs, 'reqs_per_poll'):>8.2f} "
              f"{med(rs, 'cpu_pct'):>6.1f} {per_tag:>17.1f} {rss:>8} {med(rs, 'sim_cpu_pct'):>7.1f} "
              f"{med(rs, 'other_busy_pct'):>8.1f} {bad:>4}")
    if len(per) == 2 and per["fieldgate"] > 0:
        print(f"{c:<12} CPU per tag, pymodbus client / fieldgate: {per['pymodbus'] / per['fieldgate']:.1f}x")
EOF
