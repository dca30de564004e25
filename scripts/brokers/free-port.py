"""Print a TCP port on 127.0.0.1 that is free, together with the COUNT-1 ports after it
(RabbitMQ needs its STOMP, AMQP and distribution ports side by side)."""

import random
import socket
import sys

count = int(sys.argv[1]) if len(sys.argv) > 1 else 1
for _ in range(200):
    base = random.randint(20000, 60000)
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
