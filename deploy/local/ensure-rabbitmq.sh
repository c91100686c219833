#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672: starts the local one, or
# installs it from Debian's packages first. Exits non-zero with a clear message if it can't.
set -euo pipefail

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

if port_open; then
  echo "RabbitMQ is up on 127.0.0.1:5672"
  exit 0
fi

if ! command -v rabbitmq-server >/dev/null 2>&1; then
  echo "RabbitMQ is not installed; installing rabbitmq-server from Debian's packages..."
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
      echo "error: rabbitmq-server is missing and this user cannot install packages (no root, no sudo)." >&2
      echo "       install it (apt-get install -y rabbitmq-server) or point MAILPIPE_TEST_AMQP_URL at a broker." >&2
      exit 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
fi

# A shell's default open-files limit (1,024) leaves the broker ~830 sockets: the test suite
# plus other local work can use them up, and the broker then stops completing handshakes.
# Debian's systemd unit raises it to 65,536; so does this script, as far as it may.
if ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; then
  echo "starting RabbitMQ (rabbitmq-server -detached) with an open-files limit of $(ulimit -n)..."
else
  echo "starting RabbitMQ (rabbitmq-server -detached); open-files limit $(ulimit -n) (could not raise it)..."
fi
rabbitmq-server -detached >/dev/null 2>&1 || true
for _ in $(seq 1 90); do
  if port_open && rabbitmqctl -q status >/dev/null 2>&1; then
    rabbitmqctl -q await_startup >/dev/null 2>&1 || true
    echo "RabbitMQ is up on 127.0.0.1:5672"
    exit 0
  fi
  sleep 1
done
echo "error: RabbitMQ did not come up within 90 s; see /var/log/rabbitmq/" >&2
exit 1
