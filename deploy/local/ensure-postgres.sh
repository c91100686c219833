#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 and holds what mailpipe's demo and tests
# use: starts the local cluster, or installs Debian's `postgresql` package first; then
# creates (when missing) the login role `mailpipe` with its database `mailpipe`, and the
# database `mailpipe_test` (the tests connect to it, and to `postgres` to create it, as the
# role `postgres`). All are reached over TCP on 127.0.0.1 without a password (trust), as on
# the development machines. Safe to run again. Exits non-zero with a clear message if it
# can't.
#
#   MAILPIPE_PG_TRUST_LOCAL=1   also add loopback-only `trust` lines for exactly those
#                               connections to pg_hba.conf when a password is asked (done
#                               without asking when this script has just installed PostgreSQL)
#   MAILPIPE_PG_PORT=5433       another port (to try the script on a scratch cluster)
set -euo pipefail

HOST=127.0.0.1
PORT="${MAILPIPE_PG_PORT:-5432}"
WAIT_SECONDS=60
INSTALLED_NOW=0

SUDO=""
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
can_be_root() { [ "$(id -u)" -eq 0 ] || [ -n "$SUDO" ]; }

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }
ready() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h "$HOST" -p "$PORT" -t 2
  else
    port_open
  fi
}

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $* is missing and apt-get is unavailable: install PostgreSQL so that it listens on $HOST:$PORT" >&2
    exit 1
  fi
  if ! can_be_root; then
    echo "error: $* is missing and this user cannot install packages (no root, no sudo)." >&2
    echo "       install it (apt-get install -y $*) and run this script again." >&2
    exit 1
  fi
  echo "installing $* from Debian's packages..."
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

server_installed() { compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; }

# Starts every cluster configured for $PORT that is down (Debian's pg_ctlcluster), or the
# init script when there is no cluster tooling.
start_server() {
  local started=0
  if command -v pg_lsclusters >/dev/null 2>&1; then
    while read -r ver cluster port status _; do
      if [ "$port" = "$PORT" ] && [ "$status" != "online" ]; then
        echo "starting PostgreSQL $ver/$cluster (pg_ctlcluster)..."
        $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" "$cluster" start || true
        started=1
      fi
    done < <(pg_lsclusters -h 2>/dev/null || true)
  fi
  if [ "$started" -eq 0 ]; then
    if [ -d /etc/postgresql ] && command -v pg_ctlcluster >/dev/null 2>&1 && [ "$PORT" = 5432 ]; then
      for ver in $(ls /etc/postgresql); do
        if [ -d "/etc/postgresql/$ver/main" ]; then
          echo "starting PostgreSQL $ver/main (pg_ctlcluster)..."
          $SUDO pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
          started=1
        fi
      done
    fi
  fi
  if [ "$started" -eq 0 ] && command -v service >/dev/null 2>&1; then
    echo "starting PostgreSQL (service postgresql start)..."
    $SUDO service postgresql start >/dev/null 2>&1 || true
  fi
}

# --- 1. a server answering on $HOST:$PORT -------------------------------------------------
if ! ready; then
  if ! server_installed; then
    echo "PostgreSQL is not installed."
    apt_install postgresql
    INSTALLED_NOW=1
  fi
  start_server
  for _ in $(seq 1 "$WAIT_SECONDS"); do
    ready && break
    sleep 1
  done
  if ! ready; then
    echo "error: PostgreSQL did not come up on $HOST:$PORT within ${WAIT_SECONDS} s." >&2
    if command -v pg_lsclusters >/dev/null 2>&1; then
      echo "       the clusters (is one configured for port $PORT?):" >&2
      pg_lsclusters >&2 || true
    fi
    echo "       see /var/log/postgresql/ for why it did not start." >&2
    exit 1
  fi
fi
command -v psql >/dev/null 2>&1 || apt_install postgresql-client
echo "PostgreSQL is up on $HOST:$PORT"

# --- 2. an administrator's connection -----------------------------------------------------
# Over TCP as postgres (trust, as on the development machines), else through the local
# socket as the postgres OS user (Debian's default `peer` authentication).
export PGCONNECT_TIMEOUT=5
ADMIN=()
if psql -w -h "$HOST" -p "$PORT" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  ADMIN=(psql -w -h "$HOST" -p "$PORT" -U postgres -d postgres)
elif [ "$(id -u)" -eq 0 ] && command -v runuser >/dev/null 2>&1 &&
  (cd / && runuser -u postgres -- psql -w -p "$PORT" -d postgres -Atqc 'select 1') >/dev/null 2>&1; then
  ADMIN=(runuser -u postgres -- psql -w -p "$PORT" -d postgres)
elif [ -n "$SUDO" ] &&
  (cd / && sudo -n -u postgres psql -w -p "$PORT" -d postgres -Atqc 'select 1') >/dev/null 2>&1; then
  ADMIN=(sudo -n -u postgres psql -w -p "$PORT" -d postgres)
else
  echo "error: cannot connect to PostgreSQL on $HOST:$PORT as its administrator:" >&2
  echo "       neither 'psql -h $HOST -p $PORT -U postgres' without a password nor the local socket as the OS user postgres works." >&2
  echo "       create them by hand: a login role mailpipe owning a database mailpipe, and a database mailpipe_test." >&2
  exit 1
fi
admin() { (cd / && "${ADMIN[@]}" -X -v ON_ERROR_STOP=1 -Atq "$@"); }

# --- 3. the role and the databases ----------------------------------------------------------
if [ -z "$(admin -c "SELECT 1 FROM pg_roles WHERE rolname = 'mailpipe'")" ]; then
  echo "creating the role mailpipe"
  admin -c "CREATE ROLE mailpipe LOGIN"
elif [ "$(admin -c "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'mailpipe'")" != "t" ]; then
  echo "letting the role mailpipe log in"
  admin -c "ALTER ROLE mailpipe LOGIN"
fi
if [ -z "$(admin -c "SELECT 1 FROM pg_database WHERE datname = 'mailpipe'")" ]; then
  echo "creating the database mailpipe (owner mailpipe)"
  admin -c "CREATE DATABASE mailpipe OWNER mailpipe"
fi
if [ -z "$(admin -c "SELECT 1 FROM pg_database WHERE datname = 'mailpipe_test'")" ]; then
  echo "creating the database mailpipe_test"
  admin -c "CREATE DATABASE mailpipe_test"
fi

# --- 4. the connections mailpipe makes --------------------------------------------------------
connects() {
  psql -w -h "$HOST" -p "$PORT" -U "$1" -d "$2" -Atqc 'select 1' >/dev/null 2>&1
}
all_connect() { connects mailpipe mailpipe && connects postgres mailpipe_test && connects postgres postgres; }

if ! all_connect; then
  hba_lines="# mailpipe (deploy/local/ensure-postgres.sh): its local databases, loopback only, no password
host    mailpipe        mailpipe        127.0.0.1/32    trust
host    mailpipe        mailpipe        ::1/128         trust
host    mailpipe_test   postgres        127.0.0.1/32    trust
host    mailpipe_test   postgres        ::1/128         trust
host    postgres        postgres        127.0.0.1/32    trust
host    postgres        postgres        ::1/128         trust"
  hba_file="$(admin -c 'SHOW hba_file')"
  if [ "$INSTALLED_NOW" -eq 1 ] || [ "${MAILPIPE_PG_TRUST_LOCAL:-0}" = 1 ]; then
    if ! can_be_root; then
      echo "error: $hba_file must be changed and this user is not root (no sudo)." >&2
      exit 1
    fi
    if ! $SUDO grep -q '^# mailpipe (deploy/local/ensure-postgres.sh)' "$hba_file"; then
      echo "adding loopback trust for mailpipe, mailpipe_test and postgres to $hba_file"
      # First match wins in pg_hba.conf: the lines go before every other rule.
      tmp="$(mktemp)"
      $SUDO awk -v lines="$hba_lines" '
        !done && $0 !~ /^[[:space:]]*(#|$)/ { print lines; print ""; done = 1 }
        { print }
        END { if (!done) print lines }' "$hba_file" >"$tmp"
      $SUDO sh -c "cat '$tmp' > '$hba_file'"
      rm -f "$tmp"
      admin -c 'SELECT pg_reload_conf()' >/dev/null
      sleep 1
    fi
  fi
  if ! all_connect; then
    echo "error: PostgreSQL asks for a password (or refuses) on $HOST:$PORT for mailpipe@mailpipe, postgres@mailpipe_test or postgres@postgres." >&2
    echo "       the demo and the tests connect without one. Put these lines first in $hba_file and reload" >&2
    echo "       (SELECT pg_reload_conf()), or run this script again with MAILPIPE_PG_TRUST_LOCAL=1 to have it done:" >&2
    echo "$hba_lines" | sed 's/^/         /' >&2
    exit 1
  fi
fi
echo "PostgreSQL databases mailpipe (role mailpipe) and mailpipe_test are ready on $HOST:$PORT"
