#!/usr/bin/env bash
# Installs ActiveMQ (with XStream) and RabbitMQ from the distribution's packages (Debian/Ubuntu).
# Neither is started as a service; activemq.sh and rabbitmq.sh start private instances.
set -euo pipefail
# libxstream-java: ActiveMQ's statistics plugin answers STOMP clients through XStream.
if command -v rabbitmq-server >/dev/null && [ -f /usr/share/activemq/bin/activemq.jar ] &&
    [ -f /usr/share/java/xstream.jar ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends activemq libxstream-java rabbitmq-server >/dev/null
