#!/usr/bin/env python3
"""Reads a device's coils or holding registers with pymodbus's own client and prints
them as a JSON list: an independent check of what fieldgate wrote.

Usage: modbus_read.py PORT coils|holding ADDRESS COUNT [UNIT_ID]   (Modbus TCP, 127.0.0.1)
"""

import json
import sys

from pymodbus.client import ModbusTcpClient


def main():
    port, table, address, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    unit = int(sys.argv[5]) if len(sys.argv) > 5 else 1
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=3)
    if not client.connect():
        sys.exit(f"cannot connect to 127.0.0.1:{port}")
    if table == "coils":
        r = client.read_coils(address, count=count, device_id=unit)
        values = r.bits[:count]
    else:
        r = client.read_holding_registers(address, count=count, device_id=unit)
        values = r.registers
    client.close()
    if r.isError():
        sys.exit(f"read failed: {r}")
    print(json.dumps(values))


if __name__ == "__main__":
    main()
