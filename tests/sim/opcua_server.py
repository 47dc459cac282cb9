"""An OPC UA server for the gateway's tests (asyncua): one node of every type the gateway
reads, arrays, a node of a type it does not read, writable setpoints, and a counter that
the server itself bumps at a given rate (for benchmarks).

    python3 opcua_server.py --port P [--secure DIR] [--user NAME:PASSWORD] [--rate N]

Nodes are `ns=2;s=<Name>`. With --secure, the server also offers Basic256Sha256 and
Aes128_Sha256_RsaOaep with Sign and SignAndEncrypt, its certificate and key created in
DIR on first start and reused after (a restarted server keeps its identity). With
--user, only that user (or anonymous clients on the None endpoint, for the test's own
controlling client) may log in. Prints "ready" once it listens.
"""

import argparse
import asyncio
import datetime
import pathlib
import sys

from asyncua import Server, ua
from asyncua.crypto.permission_rules import SimpleRoleRuleset
from asyncua.server.user_managers import UserManager
from asyncua.crypto.permission_rules import User, UserRole

NS = "urn:fieldgate:test:plc"

SCALARS = [
    ("Bool", True, ua.VariantType.Boolean),
    ("SByte", -5, ua.VariantType.SByte),
    ("Byte", 200, ua.VariantType.Byte),
    ("Int16", -12345, ua.VariantType.Int16),
    ("UInt16", 54321, ua.VariantType.UInt16),
    ("Int32", -2_000_000_000, ua.VariantType.Int32),
    ("UInt32", 4_000_000_000, ua.VariantType.UInt32),
    ("Int64", -9_000_000_000_000_000_000, ua.VariantType.Int64),
    ("UInt64", 18_000_000_000_000_000_000, ua.VariantType.UInt64),
    ("Float", 1.1, ua.VariantType.Float),
    ("Double", 2.718281828459045, ua.VariantType.Double),
    ("String", "Grüße, Presse 3", ua.VariantType.String),
    (
        "DateTime",
        datetime.datetime(2026, 12, 1, 8, 30, 15, 250000, tzinfo=datetime.timezone.utc),
        ua.VariantType.DateTime,
    ),
    ("DoubleArray", [1.5, -2.25, 3.0], ua.VariantType.Double),
    ("Int32Array", [7, -8, 9], ua.VariantType.Int32),
    ("Guid", ua.Guid("72962b91-fa75-4ae6-8d28-b404dc7daf63"), ua.VariantType.Guid),
    # Changed by the tests: deadbands, writes, restarts.
    ("Level", 0.0, ua.VariantType.Double),
    ("Counter", 0, ua.VariantType.Int64),
    ("Setpoint", 0.0, ua.VariantType.Double),
    ("Mode", "manual", ua.VariantType.String),
]
WRITABLE = {"Level", "Counter", "Setpoint", "Mode"}


class OneUser(UserManager):
    def __init__(self, name, password):
        self.name, self.password = name, password

    def get_user(self, iserver, username=None, password=None, certificate=None):
        if username is None:
            # The test's controlling client, anonymous on the None endpoint.
            return User(role=UserRole.Admin)
        if username == self.name and password == self.password:
            return User(role=UserRole.Admin)
        return None


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--secure", type=pathlib.Path)
    ap.add_argument("--user")
    ap.add_argument("--rate", type=float, default=0.0, help="Counter changes per second")
    ap.add_argument("--fast", type=int, default=0, help="extra Double nodes changed at --rate")
    args = ap.parse_args()

    user_manager = None
    if args.user:
        name, _, password = args.user.partition(":")
        user_manager = OneUser(name, password)
    server = Server(user_manager=user_manager)
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{args.port}/fieldgate/test/")
    server.set_server_name("fieldgate test PLC")
    await server.set_application_uri("urn:fieldgate:test:plc-server")
    policies = [ua.SecurityPolicyType.NoSecurity]
    if args.secure:
        policies += [
            ua.SecurityPolicyType.Basic256Sha256_Sign,
            ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
            ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
        ]
        args.secure.mkdir(parents=True, exist_ok=True)
        cert, key = args.secure / "server-cert.der", args.secure / "server-key.pem"
        if not cert.exists():
            from asyncua.crypto.cert_gen import setup_self_signed_certificate
            from cryptography.x509.oid import ExtendedKeyUsageOID

            await setup_self_signed_certificate(
                key,
                cert,
                "urn:fieldgate:test:plc-server",
                "127.0.0.1",
                [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH],
                {"countryName": "DE", "organizationName": "fieldgate tests", "commonName": "test PLC"},
            )
        await server.load_certificate(str(cert))
        await server.load_private_key(str(key))
    server.set_security_policy(policies, permission_ruleset=SimpleRoleRuleset())
    if args.user:
        server.set_security_IDs(["Anonymous", "Username"])

    idx = await server.register_namespace(NS)
    plc = await server.nodes.objects.add_object(ua.NodeId("PLC", idx), "PLC")
    nodes = {}
    for name, value, vtype in SCALARS:
        node = await plc.add_variable(ua.NodeId(name, idx), name, ua.Variant(value, vtype))
        if isinstance(value, list):
            await node.write_value_rank(1)
            await node.write_array_dimensions([0])
        if name in WRITABLE:
            await node.set_writable()
        nodes[name] = node
    fast = []
    for i in range(args.fast):
        fast.append(await plc.add_variable(ua.NodeId(f"Fast{i}", idx), f"Fast{i}", 0.0))

    async with server:
        print("ready", flush=True)
        counter = 0
        if args.rate <= 0:
            while True:
                await asyncio.sleep(3600)
        period = 1.0 / args.rate
        nxt = asyncio.get_running_loop().time()
        while True:
            counter += 1
            await nodes["Counter"].write_value(ua.Variant(counter, ua.VariantType.Int64))
            for f in fast:
                await f.write_value(float(counter))
            nxt += period
            delay = nxt - asyncio.get_running_loop().time()
            # Behind schedule the loop still yields, so the server keeps answering
            # requests (publishes) instead of only writing values.
            await asyncio.sleep(max(delay, 0))


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
