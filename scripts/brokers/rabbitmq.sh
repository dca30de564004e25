#!/usr/bin/env bash
# Starts or stops a private RabbitMQ node with the STOMP plugin on loopback.
#   rabbitmq.sh start DIR PORT   (returns once the node and both STOMP listeners are up)
#   rabbitmq.sh stop DIR
# Everything lives under DIR, owned by the rabbitmq user, so no system service is used.
# Ports: PORT STOMP, PORT+1 AMQP, PORT+2 Erlang distribution, PORT+3 STOMP over TLS
# (reserve them with `free-port.py 4`).
#
# Access (for tests/replication/test_broker_access.py), written to DIR/access.env:
# - guest/guest keeps full rights: clients that CONNECT without login are guest.
# - the TLS listener uses DIR/tls/{vesper-test-ca.ca.pem,server.pem,server.key}
#   (written by `python -m tests.tlsutil DIR/tls` when absent, with $VESPER_PYTHON or
#   the project's .venv); no client certificate is asked for.
# - vesper-node may do what a node on the one channel $RABBITMQ_ACL_CHANNEL (default
#   vesper-acl) needs and nothing else; vesper-reader may only subscribe to that channel's
#   topics. Both get random passcodes. Why each regex is what it is: see grant_access.
set -euo pipefail
cmd=${1:?usage: rabbitmq.sh start DIR PORT | stop DIR}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${VESPER_PYTHON:-$repo/.venv/bin/python}
# The /usr/sbin wrappers switch HOME to /var/lib/rabbitmq, so server and CLI would use
# different Erlang cookies; call the real scripts with our own HOME instead.
RBIN=/usr/lib/rabbitmq/bin
export RABBITMQ_NODENAME="vesper-$(basename "${2:?DIR}")@localhost"
export RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log"
export RABBITMQ_PID_FILE="$dir/rabbitmq.pid" RABBITMQ_CONFIG_FILE="$dir/rabbitmq.conf"
export RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins"
export RABBITMQ_FEATURE_FLAGS_FILE="$dir/feature_flags" HOME="$dir"
# Erlang's schedulers spin while idle, which takes CPU from everything else on a small
# test machine (several RabbitMQ nodes at once); a production broker may keep them.
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none"
as_rabbit() {
    if [ "$(id -un)" = rabbitmq ]; then "$@"; else
        runuser -u rabbitmq -- env RABBITMQ_NODENAME="$RABBITMQ_NODENAME" \
            RABBITMQ_MNESIA_BASE="$RABBITMQ_MNESIA_BASE" RABBITMQ_LOG_BASE="$RABBITMQ_LOG_BASE" \
            RABBITMQ_PID_FILE="$RABBITMQ_PID_FILE" RABBITMQ_CONFIG_FILE="$RABBITMQ_CONFIG_FILE" \
            RABBITMQ_ENABLED_PLUGINS_FILE="$RABBITMQ_ENABLED_PLUGINS_FILE" \
            RABBITMQ_FEATURE_FLAGS_FILE="$RABBITMQ_FEATURE_FLAGS_FILE" \
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="$RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS" \
            RABBITMQ_NODE_PORT="${RABBITMQ_NODE_PORT:-}" \
            RABBITMQ_DIST_PORT="${RABBITMQ_DIST_PORT:-}" HOME="$HOME" "$@"
    fi
}
ctl() { as_rabbit $RBIN/rabbitmqctl -q "$@" >/dev/null; }
secret() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# What STOMP does in AMQP terms, and so which permission each frame needs (checked on
# 3.10.8: dropping any one alternative from the regexes below refuses one of these):
#   SUBSCRIBE /topic/T   declares a queue (configure on it): Vesper names its durable
#                        one "C.<branch>~changesets" and its live one for /topic/C.sync
#                        "C.<branch>~sync" (x-queue-name), other clients get
#                        "stomp-subscription-<md5 of T and the id>"; binds it to
#                        amq.topic with key T (write on the queue, read on amq.topic,
#                        topic read on T) and consumes it (read on the queue).
#   SUBSCRIBE /queue/Q   declares Q (configure) and consumes it (read).
#   SEND /topic/T        publishes to amq.topic (write on it, topic write on T).
#   SEND /queue/Q        declares Q as well (configure on Q), then publishes to the
#                        default exchange (write on amq.default).
# A node on channel C uses /topic/C, /topic/C.sync, its own /queue/C.<branch> and sends
# to the other nodes' /queue/C.<branch>. Every queue of a node on C is named under
# "C." (branch ids hold no "." or "~"), so the node user's regexes name no queue of
# another channel. The reader's stomp-subscription-* queues are one namespace for all
# channels, so it gets no right on any Vesper queue.
grant_access() {
    local channel=$1 node_pass=$2 reader_pass=$3 c
    c=$(printf '%s' "$channel" | sed 's/[.]/\\./g')
    ctl add_user vesper-node "$node_pass"
    local queue="$c\\.[A-Za-z0-9_-]+"
    ctl set_permissions -p / vesper-node \
        "^$queue(~changesets|~sync)?\$" \
        "^(amq\\.topic|amq\\.default|$queue~(changesets|sync))\$" \
        "^(amq\\.topic|$queue(~changesets|~sync)?)\$"
    ctl set_topic_permissions -p / vesper-node amq.topic "^$c(\\.sync)?\$" "^$c(\\.sync)?\$"
    # Binding counts as writing to the queue, so the reader needs write on its own
    # subscription queues; it has write on no exchange, so it cannot publish anything.
    ctl add_user vesper-reader "$reader_pass"
    ctl set_permissions -p / vesper-reader \
        "^stomp-subscription-.*\$" "^stomp-subscription-.*\$" \
        "^(amq\\.topic|stomp-subscription-.*)\$"
    ctl set_topic_permissions -p / vesper-reader amq.topic "^\$" "^$c(\\.sync)?\$"
}

case "$cmd" in
start)
    port=${3:?PORT}
    # AMQP and distribution ports next to the STOMP one, so several nodes can coexist.
    export RABBITMQ_NODE_PORT=$((port + 1)) RABBITMQ_DIST_PORT=$((port + 2))
    tls_port=$((port + 3))
    channel=${RABBITMQ_ACL_CHANNEL:-vesper-acl}
    mkdir -p "$dir/mnesia" "$dir/log"
    if [ ! -f "$dir/tls/server.pem" ]; then
        (cd "$repo" && "$python" -m tests.tlsutil "$dir/tls" >/dev/null)
    fi
    echo "[rabbitmq_stomp]." > "$dir/enabled_plugins"
    cat > "$dir/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$RABBITMQ_NODE_PORT
stomp.listeners.tcp.1 = 127.0.0.1:$port
stomp.listeners.ssl.1 = 127.0.0.1:$tls_port
ssl_options.cacertfile = $dir/tls/vesper-test-ca.ca.pem
ssl_options.certfile = $dir/tls/server.pem
ssl_options.keyfile = $dir/tls/server.key
ssl_options.verify = verify_none
ssl_options.fail_if_no_peer_cert = false
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
    node_pass=$(secret) reader_pass=$(secret)
    grant_access "$channel" "$node_pass" "$reader_pass"
    (umask 077 && cat > "$dir/access.env") <<ENV
MQ_TLS=127.0.0.1:$tls_port
MQ_CA=$dir/tls/vesper-test-ca.ca.pem
MQ_CHANNEL=$channel
MQ_USER=vesper-node:$node_pass
MQ_READONLY_USER=vesper-reader:$reader_pass
ENV
    for _ in $(seq 1 60); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
            (exec 3<>"/dev/tcp/127.0.0.1/$tls_port") 2>/dev/null; then
            echo "rabbitmq: stomp://127.0.0.1:$port stomp+ssl://127.0.0.1:$tls_port" \
                "(access $dir/access.env, log $dir/log)"
            exit 0
        fi
        sleep 0.5
    done
    echo "rabbitmq STOMP listeners did not open on $port and $tls_port" >&2
    exit 1
    ;;
stop)
    [ -f "$dir/rabbitmq.pid" ] || exit 0
    as_rabbit $RBIN/rabbitmqctl -q stop "$RABBITMQ_PID_FILE" >/dev/null 2>&1 || true
    ;;
*) echo "usage: rabbitmq.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
