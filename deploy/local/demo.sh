#!/usr/bin/env bash
# Quick start: a sample batch of invoices through ingest -> render -> deliver into the
# bundled Exchange Online simulator. Makes sure RabbitMQ and PostgreSQL run, builds, runs,
# cleans up.
#   deploy/local/demo.sh            # human summary
#   deploy/local/demo.sh --json     # the summary as one JSON object
#   deploy/local/demo.sh --invoices 500
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cargo >/dev/null 2>&1; then
  echo "error: the Rust toolchain (cargo) is required: https://rustup.rs" >&2
  exit 1
fi
bash deploy/local/ensure-rabbitmq.sh >&2
bash deploy/local/ensure-postgres.sh >&2
echo "building mailpipe (first build takes a few minutes)..." >&2
cargo build --workspace --bins --locked --quiet >&2
exec ./target/debug/mailpipe-demo "$@"
