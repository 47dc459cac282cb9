"""The OPC UA benchmark's baseline: asyncua's own client subscribing to the nodes
Fast0..Fast<N-1> of tests/sim/opcua_server.py as the gateway does (one subscription,
publishing interval 100 ms, sampling as fast as the server can, queue 100), counting
the data changes it receives for a given time after a warm-up.

    python3 opcua_subscribe.py URL NODES WARMUP SECONDS

Prints one JSON object: {"changes": n, "seconds": s, "cpu_seconds": c}.
"""

import asyncio
import json
import resource
import sys
import time

from asyncua import Client, ua


class Counter:
    def __init__(self):
        self.n = 0

    def datachange_notification(self, node, val, data):
        self.n += 1


def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def main():
    url, nodes, warmup, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
    async with Client(url) as c:
        counter = Counter()
        sub = await c.create_subscription(
            ua.CreateSubscriptionParameters(
                RequestedPublishingInterval=100, RequestedLifetimeCount=300,
                RequestedMaxKeepAliveCount=10, MaxNotificationsPerPublish=0,
                PublishingEnabled=True, Priority=0,
            ),
            counter,
        )
        items = [c.get_node(f"ns=2;s=Fast{i}") for i in range(nodes)]
        await sub.subscribe_data_change(items, queuesize=100, sampling_interval=0)
        await asyncio.sleep(warmup)
        n0, c0, t0 = counter.n, cpu(), time.monotonic()
        await asyncio.sleep(seconds)
        n1, c1, t1 = counter.n, cpu(), time.monotonic()
        print(json.dumps({"changes": n1 - n0, "seconds": t1 - t0, "cpu_seconds": c1 - c0}), flush=True)


asyncio.run(main())
