#!/usr/bin/env bash
# Builds the `spilo` PostgreSQL extension (spilo-pgext/, pgrx 0.18.0) and installs it into
# Debian's PostgreSQL 15. Idempotent: cargo-pgrx is installed and initialised only once.
# With --check it also runs the extension's rustfmt and clippy checks (its behaviour is tested
# through SQL on real clusters: tests/integration/pgext.rs).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi
PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PGRX_VERSION=0.18.0
log() { echo "[install-pgext] $*"; }

if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
  log "installing cargo-pgrx $PGRX_VERSION (a few minutes)"
  cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
fi
if ! grep -qs '^pg15' "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
  log "cargo pgrx init --pg15 $PG_CONFIG"
  cargo pgrx init --pg15 "$PG_CONFIG"
fi

cd spilo-pgext
if [ "${1:-}" = "--check" ]; then
  cargo fmt -- --check
  cargo clippy --all-targets -- -D warnings
fi
log "cargo pgrx install --pg-config $PG_CONFIG"
cargo pgrx install --pg-config "$PG_CONFIG"
log "installed: $("$PG_CONFIG" --sharedir)/extension/spilo.control"
