#!/usr/bin/env bash
# Runs the Eclipse Paho MQTT conformance suites (3.1.1: client_test.py, 5:
# client_test5.py, from github.com/eclipse/paho.mqtt.testing, `interoperability/`)
# against the embedded broker on configs/conformance.toml. The suites are not in a
# package registry, so this is a measurement, not part of scripts/test.sh:
#
#   git clone https://github.com/eclipse/paho.mqtt.testing /tmp/paho.mqtt.testing
#   scripts/conformance.sh /tmp/paho.mqtt.testing
#
# It builds the debug binary if missing, starts it on a port picked free, runs both
# suites and prints their summaries.
set -euo pipefail
cd "$(dirname "$0")/.."
suites="${1:?usage: scripts/conformance.sh PATH_TO_paho.mqtt.testing}/interoperability"
[ -f "$suites/client_test5.py" ] || { echo "no client_test5.py in $suites" >&2; exit 2; }
[ -x target/debug/fieldgate ] || cargo build -p fieldgate

work=$(mktemp -d)
trap 'kill "$gw" 2>/dev/null; wait "$gw" 2>/dev/null; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mkdir -p "$work/conformance/rules"
cp configs/conformance/acl "$work/conformance/acl"
cp configs/conformance/rules/*.sql "$work/conformance/rules/"
sed -e "s/127.0.0.1:1883/127.0.0.1:$port/" -e "s/127.0.0.1:9180/127.0.0.1:$admin/" \
  configs/conformance.toml > "$work/conformance.toml"
target/debug/fieldgate run --config "$work/conformance.toml" 2> "$work/gateway.log" &
gw=$!
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

# The suites parse their own options, then hand sys.argv to unittest: give unittest none.
run() {
  (cd "$suites" && PYTHONPATH=. python3 - "$port" "$1" <<'PY'
import runpy, sys, unittest
port, script = sys.argv[1], sys.argv[2]
main = unittest.main
unittest.main = lambda *a, **k: main(argv=[script], exit=False, verbosity=1)
sys.argv = [script, "-p", port]
runpy.run_path(script, run_name="__main__")
PY
  ) 2>&1 | grep -E '^(FAIL|ERROR):|^Ran |^OK|^FAILED'
}
echo "MQTT 3.1.1 (client_test.py):"; run client_test.py || true
echo "MQTT 5 (client_test5.py):"; run client_test5.py || true
