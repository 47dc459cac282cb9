#!/usr/bin/env python3
"""Modbus TCP device simulator for fieldgate's Modbus source tests (pymodbus 3.16+).

Usage: modbus_sim.py PORT [UNIT_ID]        Modbus TCP on 127.0.0.1:PORT, one unit
       modbus_sim.py --rtu PATH BAUD        Modbus RTU on serial port PATH, units 1 and 2

Serves the register map below: values of every type in every word
order, encoded here with Python's struct module so the Rust tests decode them
independently. Holding register 100 answers every read with exception 2 (illegal data
address); holding register 199 holds the unit id. Every request that reaches the map is
printed once as `REQ fc=<code> addr=<address> unit=<id>`; once serving, the script prints
`READY`. All addresses are 0-based protocol
addresses.
"""

import asyncio
import functools
import struct
import sys

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


async def main():
    if sys.argv[1] == "--rtu":
        server = ModbusSerialServer(
            [device(1), device(2)], port=sys.argv[2], baudrate=int(sys.argv[3])
        )
    else:
        unit_id = int(sys.argv[2]) if len(sys.argv) > 2 else 1
        server = ModbusTcpServer(device(unit_id), address=("127.0.0.1", int(sys.argv[1])))
    await server.serve_forever(background=True)
    print("READY", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
