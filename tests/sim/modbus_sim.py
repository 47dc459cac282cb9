#!/usr/bin/env python3
"""Modbus TCP device simulator for fieldgate's Modbus source tests (pymodbus 3.16+).

Usage: modbus_sim.py PORT [UNIT_ID]        Modbus TCP on 127.0.0.1:PORT, one unit
       modbus_sim.py --rtu PATH BAUD        Modbus RTU on serial port PATH, units 1 and 2
                                            (other unit ids get no answer)
       modbus_sim.py --rtu-bad-crc PATH BAUD
                                            a serial device whose every answer to a
                                            read of holding registers has a wrong CRC
       modbus_sim.py --bench PORT REGISTERS [UNIT_ID]
                                            a load-test device over TCP (see below)

Serves the register map below: values of every type in every word
order, encoded here with Python's struct module so the Rust tests decode them
independently. Holding register 100 answers every read with exception 2 (illegal data
address); holding register 199 holds the unit id. Every request that reaches the map is
printed once as `REQ fc=<code> addr=<address> unit=<id>`; once serving, the script prints
`READY`. All addresses are 0-based protocol
addresses.

`--bench` serves only holding registers 0..REGISTERS-1, register `i` holding
`bench_value(i)`, prints nothing per request, and instead counts the read requests that
reach the map and the registers they read: once a second, and at once on SIGUSR1, it
prints `REQS <requests> REGS <registers> T <unix time>` (totals since start). `READY`
comes once serving.
"""

import asyncio
import functools
import signal
import struct
import sys
import time

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

EXCEPTION_ADDRESS = 100


def words(fmt, value, order):
    """Registers holding `value` packed big-endian by `fmt`, laid out in `order`."""
    raw = struct.pack(">" + fmt, value)
    regs = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if order in ("CDAB", "DCBA"):
        regs.reverse()
    if order in ("BADC", "DCBA"):
        regs = [r[::-1] for r in regs]
    return [int.from_bytes(r, "big") for r in regs]


# (address, registers) of the holding-register map; must match connectors/tests/modbus_tcp.rs.
HOLDING = [
    (0, words("H", 54321, "ABCD")),
    (1, words("h", -1234, "ABCD")),
    (2, words("I", 3_000_000_000, "ABCD")),
    (4, words("i", -2_000_000_000, "CDAB")),
    (6, words("f", 1234.5678, "ABCD")),
    (8, words("f", 1234.5678, "CDAB")),
    (10, words("f", 1234.5678, "BADC")),
    (12, words("f", 1234.5678, "DCBA")),
    (14, words("Q", 0x0123_4567_89AB_CDEF, "ABCD")),
    (18, words("q", -1_234_567_890_123, "DCBA")),
    (22, words("d", 3.141592653589793, "ABCD")),
    (26, words("d", -2.718281828459045e10, "CDAB")),
    (30, words("d", 6.02214076e23, "BADC")),
    (34, words("d", 1.0e-7, "DCBA")),
    (38, words("i", 123_456_789, "BADC")),
    (40, words("I", 0xDEAD_BEEF, "DCBA")),
    (42, [2315]),  # u16 read with scale 0.1 and offset -10: 221.5
    (43, [0b1000_0000_0000_0101]),  # bits 0, 2 and 15 set
    (44, [int.from_bytes(b"PUMP-7\0\0"[i : i + 2], "big") for i in range(0, 8, 2)]),
    (60, words("I", 77, "ABCD")),
]
INPUT = [
    (0, words("h", -5, "ABCD")),
    (1, words("f", 0.25, "CDAB")),
]
COILS = {0: True, 1: False, 2: True, 5: True}
DISCRETE = {0: True, 3: True}


def registers(entries, size):
    regs = [0] * size
    for addr, values in entries:
        regs[addr : addr + len(values)] = values
    return regs


def bit_list(bits, size):
    return [bits.get(i, False) for i in range(size)]


async def action(unit_id, function_code, _start, address, _count, _registers, values):
    # Single writes (5, 6) also read back their register to echo it: log only the write.
    if values is not None or function_code in (1, 2, 3, 4):
        print(f"REQ fc={function_code} addr={address} unit={unit_id}", flush=True)
    if function_code in (3, 6, 16, 23) and address <= EXCEPTION_ADDRESS < address + _count:
        return ExcCodes.ILLEGAL_ADDRESS
    return None


def device(unit_id):
    return SimDevice(
        id=unit_id,
        simdata=(
            [SimData(0, values=bit_list(COILS, 64), datatype=DataType.BITS)],
            [SimData(0, values=bit_list(DISCRETE, 64), datatype=DataType.BITS)],
            [
                SimData(
                    0,
                    values=registers(HOLDING + [(199, [unit_id])], 200),
                    datatype=DataType.REGISTERS,
                )
            ],
            [SimData(0, values=registers(INPUT, 100), datatype=DataType.REGISTERS)],
        ),
        use_bit_addressing=True,
        action=functools.partial(action, unit_id),
    )


def bench_value(address):
    """The value `--bench` keeps in holding register `address`."""
    return (address * 31 + 7) & 0xFFFF


async def serve_bench(port, size, unit_id):
    counts = [0, 0]  # requests, registers

    async def count(_fc, _start, _address, n, _registers, _values):
        counts[0] += 1
        counts[1] += n
        return None

    dev = SimDevice(
        id=unit_id,
        simdata=(
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [SimData(0, values=[False] * 16, datatype=DataType.BITS)],
            [
                SimData(
                    0,
                    values=[bench_value(i) for i in range(size)],
                    datatype=DataType.REGISTERS,
                )
            ],
            [SimData(0, values=[0], datatype=DataType.REGISTERS)],
        ),
        use_bit_addressing=True,
        action=count,
    )
    server = ModbusTcpServer(dev, address=("127.0.0.1", port))
    await server.serve_forever(background=True)

    def report():
        print(f"REQS {counts[0]} REGS {counts[1]} T {time.time():.3f}", flush=True)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, report)
    print("READY", flush=True)
    while True:
        await asyncio.sleep(1)
        report()


def crc16(frame):
    """Modbus CRC-16 (polynomial 0xA001 reflected, initial 0xFFFF), computed here."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def serve_bad_crc(path, baud):
    """Answers each 8-byte FC3 request with the right registers (zeros) and a wrong CRC."""
    import serial  # pyserial, installed with pymodbus[serial]

    port = serial.Serial(path, baudrate=baud, timeout=0.05)
    print("READY", flush=True)
    while True:
        request = port.read(8)
        if len(request) < 8:
            continue
        unit, fc, count = request[0], request[1], int.from_bytes(request[4:6], "big")
        print(f"REQ fc={fc} addr={int.from_bytes(request[2:4], 'big')} unit={unit}", flush=True)
        body = bytes([unit, fc, 2 * count]) + bytes(2 * count)
        crc = crc16(body) ^ 0x5A5A
        port.write(body + crc.to_bytes(2, "little"))


async def main():
    if sys.argv[1] == "--bench":
        unit_id = int(sys.argv[4]) if len(sys.argv) > 4 else 1
        await serve_bench(int(sys.argv[2]), int(sys.argv[3]), unit_id)
        return
    if sys.argv[1] == "--rtu-bad-crc":
        await asyncio.to_thread(serve_bad_crc, sys.argv[2], int(sys.argv[3]))
        return
    if sys.argv[1] == "--rtu":
        # As on a real RS-485 line, a unit id that is not there stays silent.
        server = ModbusSerialServer(
            [device(1), device(2)],
            port=sys.argv[2],
            baudrate=int(sys.argv[3]),
            ignore_missing_devices=True,
        )
        stay_silent_for_unknown_units(server)
    else:
        unit_id = int(sys.argv[2]) if len(sys.argv) > 2 else 1
        server = ModbusTcpServer(device(unit_id), address=("127.0.0.1", int(sys.argv[1])))
    await server.serve_forever(background=True)
    print("READY", flush=True)
    await asyncio.Event().wait()


def stay_silent_for_unknown_units(server):
    """pymodbus's simulator answers an unknown unit id with exception 4; a serial server
    told to ignore missing devices stays silent only when the lookup raises
    NoSuchIdException, so the lookup is made to."""
    from pymodbus.exceptions import NoSuchIdException

    core = server.context
    known = core._SimCore__get_device

    def get_device(device_id):
        if device_id not in core.devices:
            raise NoSuchIdException(f"no unit {device_id}")
        return known(device_id)

    core._SimCore__get_device = get_device


if __name__ == "__main__":
    asyncio.run(main())
