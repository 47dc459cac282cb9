# Helpers shared by the end-to-end benchmark scripts (sourced, not run): the processes a
# script starts and their cleanup, free loopback ports, bounded waits, and readings of a
# process's CPU time and memory; the binaries measured; the 150-byte readings. The sourcing script sets
# BENCH_NAME for its messages, and TARGET, BIN and OUT for `bench_binaries`.

# Every process started goes into PIDS; the trap stops them all when the script ends,
# then runs the sourcing script's `bench_cleanup` if it defines one.
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  PIDS=()
  if declare -F bench_cleanup >/dev/null; then bench_cleanup; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# forget PID: it has exited and been waited for; cleanup must not signal it.
forget() {
  local p kept=()
  for p in "${PIDS[@]}"; do
    [ "$p" = "$1" ] || kept+=("$p")
  done
  PIDS=("${kept[@]}")
}

# stop PID [seconds]: SIGTERM, then SIGKILL after the grace period.
stop() {
  local pid=$1 grace=${2:-15} i
  kill -TERM "$pid" 2>/dev/null || { forget "$pid"; return 0; }
  for ((i = 0; i < grace * 10; i++)); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; forget "$pid"; return 0; }
    sleep 0.1
  done
  echo "  pid $pid still running after ${grace}s: SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget "$pid"
}

free_port() { free_ports 1; }

# N free TCP ports on 127.0.0.1, held together while picked so they differ.
free_ports() { # n
  python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

wait_port() { # port what
  local i
  for ((i = 0; i < 150; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "$BENCH_NAME: $2 did not listen on port $1 within 15 s" >&2
  return 1
}

wait_file() { # path what seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    [ -s "$1" ] && return 0
    sleep 0.1
  done
  echo "$BENCH_NAME: $2 not ready within $3 s" >&2
  return 1
}

now_us() { date +%s%6N; }

# CPU seconds (user + system) of a process, from /proc/PID/stat.
cpu_seconds() {
  awk -v hz="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / hz }' "/proc/$1/stat"
}

peak_rss_bytes() { awk '/^VmHWM:/ { print $2 * 1024 }' "/proc/$1/status"; }

# Builds the release binaries when $1 is 1, checks that BIN has them and copies them to
# OUT/bin, which BIN then names: a build into the same target directory during the runs
# must not swap them.
bench_binaries() { # build
  if [ "$1" = 1 ]; then
    CARGO_TARGET_DIR=$TARGET nice -n 10 cargo build --release -p fieldgate -p fieldgate-e2e --bins
  fi
  local b
  for b in fieldgate bench_sub; do
    [ -x "$BIN/$b" ] || { echo "$BENCH_NAME: $BIN/$b is not built" >&2; exit 1; }
  done
  mkdir -p "$OUT/bin"
  cp "$BIN/fieldgate" "$BIN/bench_sub" "$OUT/bin/"
  BIN=$OUT/bin
}

# A mosquitto on loopback with unlimited queues and in-flight messages, for the load and
# as the cloud; persistence false unless $3 says true. Needs MOSQUITTO.
start_mosquitto() { # dir port [persistence] -> pid in MOSQ_PID
  cat >"$1/mosquitto.conf" <<CONF
listener $2 127.0.0.1
allow_anonymous true
persistence ${3:-false}
persistence_location $1/
set_tcp_nodelay true
max_queued_messages 10000000
max_queued_bytes 0
max_inflight_messages 0
max_inflight_bytes 0
max_connections -1
log_dest file $1/mosquitto.log
log_type error
log_type warning
CONF
  "$MOSQUITTO" -c "$1/mosquitto.conf" >/dev/null 2>&1 &
  MOSQ_PID=$!
  PIDS+=("$MOSQ_PID")
  wait_port "$2" mosquitto
}

# bench_sub on `#`, until 3 s pass without a message or `seconds` in all.
start_sub() { # dir name port seconds -> pid in SUB_PID, report in dir/name.json
  rm -f "$1/$2.ready"
  "$BIN/bench_sub" --broker "127.0.0.1:$3" --topic '#' --idle 3s --timeout "$4s" \
    --ready "$1/$2.ready" >"$1/$2.json" 2>"$1/$2.err" &
  SUB_PID=$!
  PIDS+=("$SUB_PID")
  wait_file "$1/$2.ready" bench_sub 15
}

# Waits (bounded) for a process started in the background to end; stops it after.
wait_sub() { # pid seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null || true; return 0; }
    sleep 0.1
  done
  echo "  bench_sub did not finish within $2 s" >&2
  stop "$1" 2
}

# Readings of exactly 150 bytes, one per line, `seq` 0..N-1 (JSON numbers have no leading
# zeros: the length is made up with white space before the closing brace).
readings150() { # n
  python3 - "$1" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    line = ('{"device":"press-%04d","ts":%d,"temp":%06.3f,"pressure":%.2f,"humidity":%05.2f,'
            '"status":"running","line":"L%d","shift":%d,"seq":%d'
            % (i % 1000, 1767225600000 + i, 10 + (i % 8000) / 100, 1000 + (i % 9000) / 100,
               10 + (i % 8900) / 100, i % 8, i % 3, i))
    print(line.ljust(149) + "}")
PY
}
