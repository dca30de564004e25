#!/usr/bin/env bash
# Starts or stops a private ActiveMQ instance with a STOMP listener on loopback.
#   activemq.sh start DIR PORT   (returns once STOMP accepts connections)
#   activemq.sh stop DIR
# The distribution's configuration has no STOMP connector: we copy it and replace the
# connectors with one stomp:// listener (see docs/replication.md).
set -euo pipefail
cmd=${1:?usage: activemq.sh start DIR PORT | stop DIR}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
home=/usr/share/activemq
case "$cmd" in
start)
    port=${3:?PORT}
    mkdir -p "$dir/conf" "$dir/data"
    cp /etc/activemq/instances-available/main/log4j2.properties "$dir/conf/" 2>/dev/null || true
    sed -e "s#<transportConnector name=\"openwire\"[^>]*/>#<transportConnector name=\"stomp\" uri=\"stomp://127.0.0.1:${port}?transport.hbGracePeriodMultiplier=1.5\&amp;transport.tcpNoDelay=true\"/>#" \
        /etc/activemq/instances-available/main/activemq.xml > "$dir/conf/activemq.xml"
    grep -q "stomp://127.0.0.1:${port}" "$dir/conf/activemq.xml"
    java -Xmx512M -Dactivemq.base="$dir" -Dactivemq.home="$home" -Dactivemq.conf="$dir/conf" \
        -Dactivemq.data="$dir/data" -jar "$home/bin/activemq.jar" \
        start "xbean:file:$dir/conf/activemq.xml" > "$dir/activemq.log" 2>&1 &
    echo $! > "$dir/activemq.pid"
    for _ in $(seq 1 120); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "activemq: stomp://127.0.0.1:$port (pid $(cat "$dir/activemq.pid"), log $dir/activemq.log)"
            exit 0
        fi
        kill -0 "$(cat "$dir/activemq.pid")" 2>/dev/null || break
        sleep 0.5
    done
    echo "activemq did not start; its log:" >&2
    tail -n 50 "$dir/activemq.log" >&2
    exit 1
    ;;
stop)
    [ -f "$dir/activemq.pid" ] || exit 0
    pid=$(cat "$dir/activemq.pid")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/activemq.pid"
    ;;
*) echo "usage: activemq.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
