"""Print a TCP port on 127.0.0.1 that is free, together with the COUNT-1 ports after it
(RabbitMQ needs its STOMP, AMQP and distribution ports side by side).

The port is chosen below the kernel's ephemeral range: a broker binds it seconds after
this check, and a port inside that range can meanwhile become the local end of any
outgoing connection on the machine (RabbitMQ once failed to start in CI because its
distribution port had been taken that way)."""

import random
import socket
import sys
from pathlib import Path


def ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
high = min(ephemeral_low(), 65536) - count
low = 10000 if high > 12000 else 1024
for _ in range(200):
    base = random.randint(low, high)
    socks = []
    try:
        for port in range(base, base + count):
            s = socket.socket()
            socks.append(s)
            s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        for s in socks:
            s.close()
    print(base)
    sys.exit(0)
sys.exit("no free port found")
