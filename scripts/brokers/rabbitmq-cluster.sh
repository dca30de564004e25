#!/usr/bin/env bash
# Starts or stops a cluster of three RabbitMQ nodes with the STOMP plugin on loopback,
# for testing Vesper against a broker network (docs/rabbitmq-cluster.md).
#   rabbitmq-cluster.sh start DIR PORT   (returns once the three nodes form one cluster
#                                         and every STOMP listener is up)
#   rabbitmq-cluster.sh stop DIR
# Node i (1-3) lives in DIR/node<i> and uses PORT+3(i-1) for STOMP, the next port for
# AMQP and the one after for Erlang distribution: reserve them with `free-port.py 9`.
# DIR/network.env then holds
#   MQ_NETWORK=127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3   the STOMP listeners, in order
#   MQ_NETWORK_PIDS=pid1,pid2,pid3                       their Erlang VMs (kill -9 them)
#   MQ_NETWORK_NODES=name1,name2,name3                   their node names
# Clients that CONNECT without login are guest (full rights, loopback only here).
set -euo pipefail
cmd=${1:?usage: rabbitmq-cluster.sh start DIR PORT | stop DIR}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
RBIN=/usr/lib/rabbitmq/bin
NODES=3

# Node names are global to the machine (one epmd): name them after the STOMP port,
# which no other running broker holds. start writes them to DIR/nodes.env for stop.
node_name() { echo "vesper-c$1-$2@localhost"; } # PORT INDEX

# The /usr/sbin wrappers switch HOME to /var/lib/rabbitmq, so server and CLI would use
# different Erlang cookies; call the real scripts with HOME=DIR, one cookie for all
# three nodes (a cluster's nodes and its CLI must share it).
node_env() { # INDEX NAME: the environment of node INDEX
    local n="$dir/node$1"
    env_vars=(HOME="$dir" RABBITMQ_NODENAME="$2"
        RABBITMQ_MNESIA_BASE="$n/mnesia" RABBITMQ_LOG_BASE="$n/log"
        RABBITMQ_PID_FILE="$n/rabbitmq.pid" RABBITMQ_CONFIG_FILE="$n/rabbitmq.conf"
        RABBITMQ_ENABLED_PLUGINS_FILE="$n/enabled_plugins"
        RABBITMQ_FEATURE_FLAGS_FILE="$n/feature_flags"
        # Idle Erlang schedulers spin: three nodes would take the CPU of a test machine.
        RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="+sbwt none +sbwtdcpu none +sbwtdio none")
    if [ -n "${3:-}" ]; then
        env_vars+=(RABBITMQ_NODE_PORT=$(($3 + 1)) RABBITMQ_DIST_PORT=$(($3 + 2)))
    fi
}
as_node() { # INDEX NAME [STOMP-PORT] -- COMMAND...
    local i=$1 name=$2 port=""
    shift 2
    if [ "$1" != -- ]; then port=$1 && shift; fi
    shift
    node_env "$i" "$name" "$port"
    if [ "$(id -un)" = rabbitmq ]; then
        env "${env_vars[@]}" "$@"
    else
        runuser -u rabbitmq -- env "${env_vars[@]}" "$@"
    fi
}
ctl() { # INDEX NAME ARGS...: rabbitmqctl against node INDEX
    local i=$1 name=$2
    shift 2
    as_node "$i" "$name" -- $RBIN/rabbitmqctl -q -n "$name" "$@"
}
fail() {
    echo "rabbitmq-cluster: $*; the nodes' output:" >&2
    cat "$dir"/node*/join.out >&2 2>/dev/null || true
    tail -n 20 "$dir"/node*/server.out "$dir"/node*/log/*.log >&2 2>/dev/null || true
    "$0" stop "$dir" || true
    exit 1
}

wait_stomp() { # every node's STOMP listener accepts connections
    local i
    for i in $(seq 1 $NODES); do
        for _ in $(seq 1 180); do
            if (exec 3<>"/dev/tcp/127.0.0.1/${stomp[i - 1]}") 2>/dev/null; then continue 2; fi
            kill -0 "${servers[i - 1]}" 2>/dev/null || fail "node $i exited"
            sleep 0.5
        done
        fail "node $i's STOMP listener did not open on ${stomp[i - 1]}"
    done
}
join_node() { # INDEX: the stopped node INDEX joins node 1 and starts again
    local i=$1
    ctl "$i" "${names[i - 1]}" join_cluster "${names[0]}" >>"$dir/node$i/join.out" 2>&1 &&
        ctl "$i" "${names[i - 1]}" start_app >>"$dir/node$i/join.out" 2>&1 ||
        fail "node $i did not join"
}

case "$cmd" in
start)
    port=${3:?PORT}
    names=() stomp=()
    for i in $(seq 1 $NODES); do
        p=$((port + 3 * (i - 1)))
        names+=("$(node_name "$port" "$i")") stomp+=("$p")
        n="$dir/node$i"
        mkdir -p "$n/mnesia" "$n/log"
        echo "[rabbitmq_stomp]." > "$n/enabled_plugins"
        # pause_minority: a node cut off from the majority stops serving instead of
        # accepting writes the majority never sees (see docs/rabbitmq-cluster.md).
        cat > "$n/rabbitmq.conf" <<CONF
listeners.tcp.default = 127.0.0.1:$((p + 1))
stomp.listeners.tcp.1 = 127.0.0.1:$p
loopback_users = none
cluster_partition_handling = pause_minority
log.console = false
log.file.level = warning
CONF
    done
    if [ ! -f "$dir/.erlang.cookie" ]; then
        head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/.erlang.cookie"
        chmod 400 "$dir/.erlang.cookie"
    fi
    printf 'MQ_NETWORK_NODES=%s\n' "$(IFS=,; echo "${names[*]}")" > "$dir/nodes.env"
    chown -R rabbitmq:rabbitmq "$dir"
    # Boot all three at once: each takes seconds of CPU, most of the start time.
    servers=()
    for i in $(seq 1 $NODES); do
        as_node "$i" "${names[i - 1]}" "${stomp[i - 1]}" -- $RBIN/rabbitmq-server \
            > "$dir/node$i/server.out" 2>&1 &
        servers+=($!)
    done
    # Each node opens its STOMP listener once it has booted: polling the ports costs
    # nothing, where `rabbitmqctl wait` would start an Erlang VM per node.
    wait_stomp
    # join_cluster needs the joining node's app stopped. Two nodes joining at once fail
    # to merge Mnesia's schema, and two starting at once fail the consistency check of
    # the other: so node 3 only stops while node 2 joins and starts, then joins itself.
    # A DIR started before holds the cluster in its Mnesia files: its nodes find each
    # other again by themselves.
    if [ ! -f "$dir/clustered" ]; then
        ctl 3 "${names[2]}" stop_app >"$dir/node3/join.out" 2>&1 &
        stopping=$!
        ctl 2 "${names[1]}" stop_app >"$dir/node2/join.out" 2>&1 || fail "node 2 did not stop"
        join_node 2
        wait "$stopping" || fail "node 3 did not stop"
        join_node 3
        touch "$dir/clustered"
    fi
    running=$(ctl 1 "${names[0]}" eval 'length(rabbit_nodes:all_running()).' 2>/dev/null || true)
    [ "$running" = "$NODES" ] || fail "the cluster runs $running of $NODES nodes"
    wait_stomp
    # The pid file holds the Erlang VM's own pid (beam.smp), the process to SIGKILL.
    pids=() network=()
    for i in $(seq 1 $NODES); do
        pids+=("$(cat "$dir/node$i/rabbitmq.pid")") network+=("127.0.0.1:${stomp[i - 1]}")
    done
    {
        printf 'MQ_NETWORK=%s\n' "$(IFS=,; echo "${network[*]}")"
        printf 'MQ_NETWORK_PIDS=%s\n' "$(IFS=,; echo "${pids[*]}")"
        cat "$dir/nodes.env"
    } > "$dir/network.env"
    echo "rabbitmq cluster: stomp://${network[0]} stomp://${network[1]} stomp://${network[2]}" \
        "(nodes $(IFS=' '; echo "${names[*]}"); $dir/network.env)"
    ;;
stop)
    [ -f "$dir/nodes.env" ] || exit 0
    IFS=, read -r -a names < <(sed -n 's/^MQ_NETWORK_NODES=//p' "$dir/nodes.env")
    stops=()
    for i in $(seq 1 ${#names[@]}); do
        pidfile="$dir/node$i/rabbitmq.pid"
        [ -f "$pidfile" ] || continue
        # A node killed by a test leaves its pid file: stop only a live one.
        if kill -0 "$(cat "$pidfile")" 2>/dev/null; then
            ctl "$i" "${names[i - 1]}" stop "$pidfile" >/dev/null 2>&1 &
            stops+=($!)
        fi
    done
    for s in "${stops[@]}"; do wait "$s" || true; done
    ;;
*) echo "usage: rabbitmq-cluster.sh start DIR PORT | stop DIR" >&2; exit 2 ;;
esac
