#!/usr/bin/env bash
# Starts or stops a private RabbitMQ node with the STOMP plugin on loopback.
#   rabbitmq.sh start DIR PORT   (returns once the node and STOMP listener are up)
#   rabbitmq.sh stop DIR
# Everything lives under DIR, owned by the rabbitmq user, so no system service is used.
set -euo pipefail
cmd=${1:?usage: rabbitmq.sh start DIR PORT | stop DIR}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
# The /usr/sbin wrappers switch HOME to /var/lib/rabbitmq, so server and CLI would use
# different Erlang cookies; call the real scripts with our own HOME instead.
RBIN=/usr/lib/rabbitmq/bin
export RABBITMQ_NODENAME="vesper-$(basename "${2:?DIR}")@localhost"
export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_FEATURE_FLAGS_FILE="$dir/feature_flags" HOME="$dir"
as_rabbit() {
    if [ "$(id -un)" = rabbitmq ]; then "$@"; else
        runuser -u rabbitmq -- env RABBITMQ_NODENAME="$RABBITMQ_NODENAME" \
            RABBITMQ_MNESIA_BASE="$RABBITMQ_MNESIA_BASE" RABBITMQ_LOG_BASE="$RABBITMQ_LOG_BASE" \
            RABBITMQ_PID_FILE="$RABBITMQ_PID_FILE" RABBITMQ_CONFIG_FILE="$RABBITMQ_CONFIG_FILE" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$RABBITMQ_ENABLED_PLUGINS_FILE" \
            RABBITMQ_FEATURE_FLAGS_FILE="$RABBITMQ_FEATURE_FLAGS_FILE" \
            RABBITMQ_NODE_PORT="${RABBITMQ_NODE_PORT:-}" \
            RABBITMQ_DIST_PORT="${RABBITMQ_DIST_PORT:-}" HOME="$HOME" "$@"
    fi
}
case "$cmd" in
start)
    port=${3:?PORT}
    # AMQP and distribution ports next to the STOMP one, so several nodes can coexist.
    export RABBITMQ_NODE_PORT=$((port + 1)) RABBITMQ_DIST_PORT=$((port + 2))
    mkdir -p "$dir/mnesia" "$dir/log"
    echo "[rabbitmq_stomp]." > "$dir/enabled_plugins"
    cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBITMQ_NODE_PORT
stomp.listeners.tcp.1 = 127.0.0.1:$port
loopback_users = none
log.console = false
log.file.level = warning
CONF
    if [ ! -f "$dir/.erlang.cookie" ]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/.erlang.cookie"
        chmod 400 "$dir/.erlang.cookie"
    fi
    chown -R rabbitmq:rabbitmq "$dir"
    as_rabbit $RBIN/rabbitmq-server > "$dir/server.out" 2>&1 &
    as_rabbit $RBIN/rabbitmqctl -q wait --timeout 90 "$RABBITMQ_PID_FILE" >/dev/null 2>&1 || {
        echo "rabbitmq did not start; its output:" >&2
        tail -n 40 "$dir/server.out" "$dir"/log/*.log >&2 2>/dev/null || true
        exit 1
    }
    for _ in $(seq 1 60); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "rabbitmq: stomp://127.0.0.1:$port (log $dir/log)"
            exit 0
        fi
        sleep 0.5
    done
    echo "rabbitmq STOMP listener did not open on $port" >&2
    exit 1
    ;;
stop)
    [ -f "$dir/rabbitmq.pid" ] || exit 0
    as_rabbit $RBIN/rabbitmqctl -q stop "$RABBITMQ_PID_FILE" >/dev/null 2>&1 || true
    ;;
*) echo "usage: rabbitmq.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
