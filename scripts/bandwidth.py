#!/usr/bin/env python3
"""Bytes in and out of rule files over one generated hour of telemetry.

Writes an hour of readings from 20 devices, one per device per second (temperature
drifting slowly around 24 °C, with noise of ±0.2 °C and a few spikes above 30 °C), and runs
`fieldgate rules test` over them for each rule file given; prints the summary line.

    scripts/bandwidth.py target/debug/fieldgate configs/rules/telemetry.sql [more.sql ...]
"""

import json
import pathlib
import random
import subprocess
import sys
import tempfile

DEVICES = 20
SECONDS = 3600
T0 = 1_764_000_000_000


def readings():
    rng = random.Random(7)
    level = {d: 24.0 + rng.uniform(-2, 2) for d in range(DEVICES)}
    for s in range(SECONDS):
        for d in range(DEVICES):
            level[d] += rng.uniform(-0.01, 0.01)
            temp = level[d] + rng.uniform(-0.2, 0.2)
            if rng.random() < 0.001:
                temp += 8
            yield {"device": f"dev{d:02}", "ts": T0 + s * 1000, "temp": round(temp, 2)}


def main():
    binary, rules = sys.argv[1], sys.argv[2:]
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "hour.jsonl"
        with open(path, "w") as f:
            for r in readings():
                f.write(json.dumps(r) + "\n")
        for rule_file in rules:
            run = subprocess.run(
                [binary, "rules", "test", rule_file, "--input", str(path)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                check=False,
            )
            summary = [l for l in run.stderr.splitlines() if l.startswith("summary:")]
            print(f"{rule_file}: {summary[-1] if summary else run.stderr.strip()}")


if __name__ == "__main__":
    main()
