#!/usr/bin/env bash
# Installs ActiveMQ and RabbitMQ from the distribution's packages (Debian/Ubuntu).
# Neither is started as a service; activemq.sh and rabbitmq.sh start private instances.
set -euo pipefail
if command -v rabbitmq-server >/dev/null && [ -f /usr/share/activemq/bin/activemq.jar ]; then
    exit 0
fi
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends activemq rabbitmq-server >/dev/null
