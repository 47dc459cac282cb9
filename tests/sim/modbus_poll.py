#!/usr/bin/env python3
"""A Modbus TCP poller written with pymodbus's own asyncio client: the baseline that
`scripts/bench-modbus.sh` compares fieldgate's polling with.

Usage: modbus_poll.py INTERVAL_MS TAGS PORT [PORT ...]

Polls, for each device (127.0.0.1:PORT, unit 1), holding registers 0..TAGS-1 as TAGS u16
tags every INTERVAL_MS, in reads of at most 125 registers sent one after the other, as
fieldgate does. Each poll becomes one row, a dict holding the device, the time and per
tag its value and `<tag>_quality`. Devices are polled concurrently in one process (one
core). A poll that falls behind starts the next one right away and the schedule moves on
from there (no burst of catch-up polls).

Prints `READY` once connected to every device, then once a second, and at once on
SIGUSR1, `POLLS <polls> REQS <requests> BAD <bad values> T <unix time>` (totals since
start). A value is bad when it differs from what `modbus_sim.py --bench` keeps in that
register, or its read failed.
"""

import asyncio
import signal
import sys
import time

from pymodbus.client import AsyncModbusTcpClient

MAX_READ = 125


def expected(address):
    """What `modbus_sim.py --bench` keeps in holding register `address`."""
    return (address * 31 + 7) & 0xFFFF


class Totals:
    polls = 0
    requests = 0
    bad = 0


async def poll_device(name, client, tags, interval, totals):
    names = [f"t{i}" for i in range(tags)]
    qualities = [f"t{i}_quality" for i in range(tags)]
    reads = [(start, min(MAX_READ, tags - start)) for start in range(0, tags, MAX_READ)]
    last_value = expected(tags - 1)
    loop = asyncio.get_running_loop()
    due = loop.time()
    while True:
        row = {"device": name, "timestamp": int(time.time() * 1000)}
        for start, count in reads:
            totals.requests += 1
            try:
                r = await client.read_holding_registers(start, count=count, device_id=1)
                values = None if r.isError() else r.registers
            except Exception:  # noqa: BLE001 - a failed read is a bad quality, not a crash
                values = None
            if values is None or len(values) < count:
                totals.bad += count
                for i in range(start, start + count):
                    row[names[i]] = None
                    row[qualities[i]] = "io_error"
                continue
            for k, v in enumerate(values):
                row[names[start + k]] = v
                row[qualities[start + k]] = "ok"
        totals.polls += 1
        if row[names[-1]] != last_value:
            totals.bad += 1
        due += interval
        now = loop.time()
        if due < now:
            due = now
        await asyncio.sleep(due - now)


async def main():
    interval = int(sys.argv[1]) / 1000
    tags = int(sys.argv[2])
    ports = [int(p) for p in sys.argv[3:]]
    totals = Totals()
    clients = []
    for port in ports:
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
        if not await client.connect():
            sys.exit(f"cannot connect to 127.0.0.1:{port}")
        clients.append(client)

    def report():
        print(
            f"POLLS {totals.polls} REQS {totals.requests} BAD {totals.bad} T {time.time():.3f}",
            flush=True,
        )

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)
    tasks = [
        asyncio.create_task(poll_device(f"plc{i + 1}", c, tags, interval, totals))
        for i, c in enumerate(clients)
    ]
    print("READY", flush=True)
    while True:
        await asyncio.sleep(1)
        for t in tasks:
            if t.done():
                t.result()
        report()


if __name__ == "__main__":
    asyncio.run(main())
