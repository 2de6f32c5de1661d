#!/usr/bin/env python3
"""Hold a TLS port without finishing handshakes, for benches/tls:

    benches/hold-connections.py ADDR N SECONDS silent|half-hello

N connections to ADDR (host:port) that send nothing, or the first half of a real TLS
ClientHello (made by Python's ssl module), and then nothing more; each is reopened as soon
as the server cuts it. Stops after SECONDS. Prints how many connections it opened.
Loopback only: ADDR must be 127.0.0.1 or ::1.
"""

import asyncio
import ssl
import sys
import time


def half_hello() -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    return hello[: len(hello) // 2]


async def hold(host, port, first, until, opened):
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port), until - time.monotonic()
            )
        except (OSError, asyncio.TimeoutError):
            await asyncio.sleep(0.005)
            continue
        opened[0] += 1
        try:
            if first:
                writer.write(first)
                await writer.drain()
            # Until the server cuts it, or the time is up.
            await asyncio.wait_for(reader.read(), max(0.0, until - time.monotonic()))
        except (OSError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()


async def main():
    if len(sys.argv) != 5 or sys.argv[4] not in ("silent", "half-hello"):
        sys.exit(__doc__)
    host, _, port = sys.argv[1].rpartition(":")
    host = host.strip("[]")
    if host not in ("127.0.0.1", "::1"):
        sys.exit(f"hold-connections: {host} is not loopback")
    n, secs = int(sys.argv[2]), float(sys.argv[3])
    first = half_hello() if sys.argv[4] == "half-hello" else b""
    until = time.monotonic() + secs
    opened = [0]
    await asyncio.gather(*(hold(host, int(port), first, until, opened) for _ in range(n)))
    print(opened[0])


asyncio.run(main())
