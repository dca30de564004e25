#!/usr/bin/env bash
# Starts or stops N private ActiveMQ brokers on loopback joined into one network of
# brokers (docs/broker-networks.md explains the configuration).
#   activemq-network.sh start DIR PORT [N]   N brokers, 2 by default (2 to 9)
#   activemq-network.sh stop DIR
# Broker i (1..N) is `activemq.sh start DIR/b<i>` with brokerName amq<i> and the ports
#   PORT+3(i-1)     STOMP
#   PORT+3(i-1)+1   STOMP over TLS (its DIR/b<i>/access.env describes it and its users)
#   PORT+3(i-1)+2   OpenWire, which only the network bridges use
# (reserve them with `free-port.py $((3 * N))`). Each broker opens one duplex bridge to
# every broker before it: a full mesh, one connection per pair.
#
# Returns once every broker accepts STOMP and every broker's messages reach a
# subscriber on every other broker (the bridges form some seconds after the brokers
# start), then writes DIR/network.env:
#   MQ_NETWORK=127.0.0.1:P1,127.0.0.1:P2,...   the STOMP listeners, broker 1 first
#   MQ_NETWORK_PIDS=pid1,pid2,...              the brokers' java processes, same order
set -euo pipefail
usage="usage: activemq-network.sh start DIR PORT [N] | stop DIR"
cmd=${1:?$usage}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${VESPER_PYTHON:-$repo/.venv/bin/python}

stop_all() {
    local b
    for b in "$dir"/b[1-9]; do
        [ -d "$b" ] && "$here/activemq.sh" stop "$b" &
    done
    wait
    rm -f "$dir/network.env"
}

case "$cmd" in
start)
    port=${3:?PORT}
    count=${4:-2}
    case "$count" in [2-9]) ;; *) echo "$usage (N from 2 to 9)" >&2; exit 2 ;; esac
    stomp=() pids=() starters=()
    for i in $(seq 1 "$count"); do
        base=$((port + 3 * (i - 1)))
        peers=""
        for j in $(seq 1 $((i - 1))); do
            peers="$peers 127.0.0.1:$((port + 3 * (j - 1) + 2))"
        done
        stomp+=("127.0.0.1:$base")
        # In parallel: a broker starts in seconds, and its bridges to the brokers
        # before it retry until those listen.
        ACTIVEMQ_BROKER_NAME="amq$i" ACTIVEMQ_OPENWIRE_PORT=$((base + 2)) \
            ACTIVEMQ_NETWORK_TO="$peers" "$here/activemq.sh" start "$dir/b$i" "$base" &
        starters+=($!)
    done
    failed=0
    for starter in "${starters[@]}"; do
        wait "$starter" || failed=1
    done
    if [ "$failed" = 1 ]; then
        echo "activemq-network: a broker did not start" >&2
        stop_all
        exit 1
    fi
    for i in $(seq 1 "$count"); do
        pids+=("$(cat "$dir/b$i/activemq.pid")")
    done
    # The bridges are up when a message sent on each broker reaches a subscriber on
    # every other one: send a probe from each broker twice a second until every
    # subscriber heard every other broker.
    if ! (IFS=,; "$python" - "${stomp[*]}" <<'PY'
import sys
import threading
import time
import uuid

import stomp

DEADLINE_S = 90.0
addresses = [tuple(a.rsplit(":", 1)) for a in sys.argv[1].split(",")]
topic = f"/topic/vesper-network-probe.{uuid.uuid4().hex[:8]}"
heard: list[set[str]] = [set() for _ in addresses]
lock = threading.Lock()


class Probe(stomp.ConnectionListener):
    def __init__(self, index: int) -> None:
        self.index = index

    def on_message(self, frame: stomp.utils.Frame) -> None:
        with lock:
            heard[self.index].add(frame.headers.get("probefrom", ""))


connections = []
for i, (host, port) in enumerate(addresses):
    conn = stomp.Connection12([(host, int(port))], heartbeats=(0, 0))
    conn.set_listener("probe", Probe(i))
    conn.connect(wait=True)
    conn.subscribe(topic, id="probe", ack="auto")
    connections.append(conn)
names = [str(i) for i in range(len(addresses))]
deadline = time.monotonic() + DEADLINE_S
while True:
    with lock:
        missing = [
            f"{j + 1}->{i + 1}" for i in range(len(names)) for j in range(len(names))
            if i != j and names[j] not in heard[i]
        ]
    if not missing:
        break
    if time.monotonic() > deadline:
        sys.exit(f"activemq-network: no messages across {', '.join(missing)} after {DEADLINE_S:g} s")
    for j, conn in enumerate(connections):
        conn.send(topic, body="probe", headers={"probefrom": names[j]})
    time.sleep(0.5)
for conn in connections:
    conn.disconnect()
PY
    ); then
        for i in $(seq 1 "$count"); do
            echo "== broker $i log" >&2
            tail -n 20 "$dir/b$i/activemq.log" >&2
        done
        stop_all
        exit 1
    fi
    (IFS=,; printf 'MQ_NETWORK=%s\nMQ_NETWORK_PIDS=%s\n' "${stomp[*]}" "${pids[*]}") > "$dir/network.env"
    echo "activemq-network: $count brokers, bridges up ($(tr '\n' ' ' < "$dir/network.env"))"
    ;;
stop)
    stop_all
    ;;
*) echo "$usage" >&2; exit 2 ;;
esac
