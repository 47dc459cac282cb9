#!/usr/bin/env bash
# Runs fieldgate's whole test suite on a fresh machine: installs what the tests need
# when it is missing (mosquitto, nats-server, podman, runc, debootstrap, socat, mount and prlimit from Debian; paho-mqtt, pytest,
# pymodbus, asyncua and PyYAML from PyPI), checks formatting and clippy (warnings are errors),
# builds the gateway once in the debug profile, then runs the Rust tests and the Python
# client tests against that binary. The full-disk tests
# mount small tmpfs file systems, so the suite runs as root (as CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v socat >/dev/null 2>&1 || missing+=(socat)
# The fleet tests run a three-node JetStream cluster (tests/tests/nats.rs).
command -v nats-server >/dev/null 2>&1 || [ -x /usr/bin/nats-server ] || missing+=(nats-server)
# The image test builds and runs the container image (tests/python/test_image.py).
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
command -v debootstrap >/dev/null 2>&1 || [ -x /usr/sbin/debootstrap ] || missing+=(debootstrap)
# The full-disk tests mount small tmpfs disks; the descriptor test runs under prlimit.
command -v mount >/dev/null 2>&1 || missing+=(mount)
command -v prlimit >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
if ! python3 -c 'import paho.mqtt.client, pytest' >/dev/null 2>&1; then
  echo "installing paho-mqtt and pytest"
  python3 -m pip install --quiet --disable-pip-version-check 'paho-mqtt>=2,<3' 'pytest>=8'
fi
# The deployment tests read the Kubernetes manifests and render them with `kubectl
# kustomize` when kubectl is installed, with PyYAML alone otherwise.
if ! python3 -c 'import yaml' >/dev/null 2>&1; then
  echo "installing PyYAML"
  python3 -m pip install --quiet --disable-pip-version-check 'PyYAML>=6,<7'
fi
# The Modbus tests use pymodbus's SimDevice simulator (new in 3.16) and its serial server
# (pyserial, the `serial` extra).
if ! python3 -c 'import sys, serial, pymodbus; sys.exit(tuple(map(int, pymodbus.__version__.split(".")[:2])) < (3, 16))' >/dev/null 2>&1; then
  echo "installing pymodbus"
  python3 -m pip install --quiet --disable-pip-version-check 'pymodbus[serial]>=3.16,<4'
fi
# The OPC UA tests run an asyncua server (tests/sim/opcua_server.py) and use its client.
if ! python3 -c 'import asyncua' >/dev/null 2>&1; then
  echo "installing asyncua"
  python3 -m pip install --quiet --disable-pip-version-check 'asyncua>=1.1,<3'
fi

# The gates: formatting, and clippy with every warning an error.
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings

# The end-to-end tests run this binary; build it once, in the debug profile.
cargo build -p fieldgate
cargo test --workspace
python3 -m pytest -q tests/python
