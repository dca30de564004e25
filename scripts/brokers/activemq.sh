#!/usr/bin/env bash
# Starts or stops a private ActiveMQ instance with STOMP listeners on loopback.
#   activemq.sh start DIR PORT   (returns once both STOMP listeners accept connections)
#   activemq.sh stop DIR
# Ports: PORT STOMP, PORT+1 STOMP over TLS (reserve them with `free-port.py 2`).
# The distribution's configuration has no STOMP connector, so we write our own: its
# broker and KahaDB store, two STOMP connectors, logins and permissions (see
# docs/replication.md).
#
# Access (for tests/replication/test_broker_access.py), written to DIR/access.env:
# - clients that CONNECT without login are the anonymous user, with every right.
# - the TLS listener uses DIR/tls/{vesper-test-ca.ca.pem,server.pem,server.key}
#   (written by `python -m tests.tlsutil DIR/tls` when absent, with $VESPER_PYTHON or
#   the project's .venv) as a PKCS12 keystore.
# - vesper-node may do what a node on the one channel $ACTIVEMQ_ACL_CHANNEL (default
#   vesper-acl) needs; vesper-reader may only subscribe to that channel's topics.
#
# One broker of a network of brokers (scripts/brokers/activemq-network.sh sets these;
# docs/broker-networks.md explains every setting):
#   ACTIVEMQ_BROKER_NAME    brokerName, unique in the network (default localhost)
#   ACTIVEMQ_OPENWIRE_PORT  also listen for OpenWire (what network bridges speak) there
#   ACTIVEMQ_NETWORK_TO     space-separated host:port OpenWire listeners of other
#                           brokers: one duplex bridge to each
#
# Every instance answers statistics requests (statisticsBrokerPlugin: see
# tests/replication/broker_stats.py), drops expired messages instead of keeping them in
# a dead-letter queue, and looks for expired messages of offline durable subscribers
# every $ACTIVEMQ_EXPIRE_PERIOD_MS ms (default 1000).
set -euo pipefail
cmd=${1:?usage: activemq.sh start DIR PORT | stop DIR}
dir=$(mkdir -p "${2:?DIR}" && cd "$2" && pwd)
repo=$(cd "$(dirname "$0")/../.." && pwd)
python=${VESPER_PYTHON:-$repo/.venv/bin/python}
home=/usr/share/activemq
secret() { head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
case "$cmd" in
start)
    port=${3:?PORT}
    tls_port=$((port + 1))
    channel=${ACTIVEMQ_ACL_CHANNEL:-vesper-acl}
    name=${ACTIVEMQ_BROKER_NAME:-localhost}
    expire_ms=${ACTIVEMQ_EXPIRE_PERIOD_MS:-1000}
    openwire="" network=""
    if [ -n "${ACTIVEMQ_OPENWIRE_PORT:-}" ]; then
        openwire="<transportConnector name=\"openwire\" uri=\"tcp://127.0.0.1:$ACTIVEMQ_OPENWIRE_PORT?transport.tcpNoDelay=true\"/>"
    fi
    for peer in ${ACTIVEMQ_NETWORK_TO:-}; do
        # Duplex: one connection carries both directions. conduitSubscriptions keeps
        # one network subscription per topic, so each message crosses a bridge once
        # however many durable subscribers wait behind it; networkTTL 1 suits a full
        # mesh (a message never travels on from the broker it was forwarded to).
        network="$network
      <networkConnector name=\"$name-to-${peer//:/-}\" duplex=\"true\" conduitSubscriptions=\"true\"
          networkTTL=\"1\" decreaseNetworkConsumerPriority=\"true\"
          uri=\"static:(tcp://$peer)?initialReconnectDelay=500&amp;maxReconnectDelay=5000\"/>"
    done
    [ -z "$network" ] || network="<networkConnectors>$network
    </networkConnectors>"
    mkdir -p "$dir/conf" "$dir/data" "$dir/lib"
    # The statistics answers are map messages, which STOMP delivers only as XML or
    # JSON (the `transformation` header), through XStream: Debian's libxstream-java,
    # put on the broker's classpath ($dir/lib). Without it the broker fails such a
    # delivery and drops the connection.
    if [ -f /usr/share/java/xstream.jar ]; then
        ln -sf /usr/share/java/xstream.jar "$dir/lib/xstream.jar"
    fi
    # The packaged broker logs through log4j 1.2, for which the distribution ships no
    # configuration: without one it logs nothing at all.
    cat > "$dir/conf/log4j.properties" <<'LOG'
log4j.rootLogger=INFO, out
log4j.logger.org.apache.activemq.spring=WARN
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=%d{ISO8601} %-5p %m (%c{1})%n
LOG
    if [ ! -f "$dir/tls/server.pem" ]; then
        (cd "$repo" && "$python" -m tests.tlsutil "$dir/tls" >/dev/null)
    fi
    store_pass=$(secret) node_pass=$(secret) reader_pass=$(secret)
    # Java reads PKCS12 keystores directly: no keytool needed.
    "$python" - "$dir/tls" "$store_pass" <<'PY'
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

tls, password = Path(sys.argv[1]), sys.argv[2].encode()
key = serialization.load_pem_private_key((tls / "server.key").read_bytes(), None)
cert = x509.load_pem_x509_certificate((tls / "server.pem").read_bytes())
ca = x509.load_pem_x509_certificate((tls / "vesper-test-ca.ca.pem").read_bytes())
store = pkcs12.serialize_key_and_certificates(
    b"broker", key, cert, [ca], serialization.BestAvailableEncryption(password)
)
with os.fdopen(os.open(tls / "server.p12", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
    f.write(store)
PY
    # Connections without login are the anonymous user (group "anonymous"), so the
    # ordinary --mq runs need no credentials. Per destination, read = SUBSCRIBE, write =
    # SEND, admin = create it when first used; the catch-all ">" entries grant only
    # anonymous, the channel's entries add the two users. Every CONNECT creates the advisory topic
    # ActiveMQ.Advisory.Connection in the client's name, so every user needs admin there
    # (nothing else: the broker writes advisories itself). SUBSCRIBE needs no admin,
    # even to a topic that does not exist yet.
    opts="transport.hbGracePeriodMultiplier=1.5&amp;transport.tcpNoDelay=true"
    cat > "$dir/conf/activemq.xml" <<XML
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans-2.0.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <broker xmlns="http://activemq.apache.org/schema/core" useJmx="false"
          brokerName="$name" dataDirectory="$dir/data" networkConnectorStartAsync="true">
    <destinationPolicy>
      <policyMap>
        <policyEntries>
          <!-- Expired messages are dropped (the default keeps them in ActiveMQ.DLQ),
               also those of offline durable subscribers, looked for every
               expireMessagesPeriod ms. -->
          <policyEntry topic="&gt;" expireMessagesPeriod="$expire_ms">
            <deadLetterStrategy>
              <sharedDeadLetterStrategy processExpired="false"/>
            </deadLetterStrategy>
          </policyEntry>
          <!-- In a network, a queue message forwarded to the broker where its
               consumer was may go back to the broker where the consumer is now
               (never otherwise: that prevents loops). -->
          <policyEntry queue="&gt;" expireMessagesPeriod="$expire_ms">
            <deadLetterStrategy>
              <sharedDeadLetterStrategy processExpired="false"/>
            </deadLetterStrategy>
            <networkBridgeFilterFactory>
              <conditionalNetworkBridgeFilterFactory replayWhenNoConsumers="true"/>
            </networkBridgeFilterFactory>
          </policyEntry>
        </policyEntries>
      </policyMap>
    </destinationPolicy>
    $network
    <persistenceAdapter>
      <kahaDB directory="$dir/data/kahadb"/>
    </persistenceAdapter>
    <plugins>
      <statisticsBrokerPlugin/>
      <simpleAuthenticationPlugin anonymousAccessAllowed="true"
          anonymousUser="anonymous" anonymousGroup="anonymous">
        <users>
          <authenticationUser username="vesper-node" password="$node_pass" groups="nodes"/>
          <authenticationUser username="vesper-reader" password="$reader_pass" groups="readers"/>
        </users>
      </simpleAuthenticationPlugin>
      <authorizationPlugin>
        <map>
          <authorizationMap>
            <authorizationEntries>
              <authorizationEntry queue="&gt;" read="anonymous" write="anonymous" admin="anonymous"/>
              <authorizationEntry topic="&gt;" read="anonymous" write="anonymous" admin="anonymous"/>
              <authorizationEntry topic="$channel" read="anonymous,nodes,readers"
                  write="anonymous,nodes" admin="anonymous,nodes"/>
              <authorizationEntry topic="$channel.sync" read="anonymous,nodes,readers"
                  write="anonymous,nodes" admin="anonymous,nodes"/>
              <authorizationEntry queue="$channel.&gt;" read="anonymous,nodes"
                  write="anonymous,nodes" admin="anonymous,nodes"/>
              <authorizationEntry topic="ActiveMQ.Advisory.&gt;" read="anonymous"
                  write="anonymous" admin="anonymous,nodes,readers"/>
            </authorizationEntries>
          </authorizationMap>
        </map>
      </authorizationPlugin>
    </plugins>
    <sslContext>
      <sslContext keyStore="file:$dir/tls/server.p12" keyStorePassword="$store_pass"
          keyStoreType="PKCS12"/>
    </sslContext>
    <transportConnectors>
      <transportConnector name="stomp" uri="stomp://127.0.0.1:$port?$opts"/>
      <transportConnector name="stomp-ssl" uri="stomp+ssl://127.0.0.1:$tls_port?$opts"/>
      $openwire
    </transportConnectors>
  </broker>
</beans>
XML
    chmod 600 "$dir/conf/activemq.xml"
    java -Xmx512M -Dactivemq.base="$dir" -Dactivemq.home="$home" -Dactivemq.conf="$dir/conf" \
        -Dactivemq.data="$dir/data" -Dlog4j.configuration="file:$dir/conf/log4j.properties" \
        -jar "$home/bin/activemq.jar" \
        start "xbean:file:$dir/conf/activemq.xml" > "$dir/activemq.log" 2>&1 &
    echo $! > "$dir/activemq.pid"
    (umask 077 && cat > "$dir/access.env") <<ENV
MQ_TLS=127.0.0.1:$tls_port
MQ_CA=$dir/tls/vesper-test-ca.ca.pem
MQ_CHANNEL=$channel
MQ_USER=vesper-node:$node_pass
MQ_READONLY_USER=vesper-reader:$reader_pass
ENV
    for _ in $(seq 1 120); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null &&
            (exec 3<>"/dev/tcp/127.0.0.1/$tls_port") 2>/dev/null; then
            echo "activemq: stomp://127.0.0.1:$port stomp+ssl://127.0.0.1:$tls_port" \
                "(pid $(cat "$dir/activemq.pid"), access $dir/access.env, log $dir/activemq.log)"
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
