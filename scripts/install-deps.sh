#!/usr/bin/env bash
# Installs what spilo's build and tests need on Debian 12. Idempotent: installs only missing
# packages (apt-get update only when something is missing) and never leaves Debian's own
# `main` PostgreSQL cluster holding port 5432.
set -euo pipefail

PACKAGES=(
  postgresql-15
  postgresql-server-dev-15
  etcd-server
  etcd-client
  protobuf-compiler
  wrk
  curl
  jq
  ca-certificates
  # The vendored Lua (mlua) and the C test plugin, compiled against the plugin ABI header.
  gcc
  libc6-dev
  # Operations integration tests: a real load balancer, promtool (`prometheus`) for the
  # metrics format, and Debian's python3 venv for an unmodified patronictl from PyPI.
  haproxy
  prometheus
  python3
  python3-venv
  # ZooKeeper DCS backend tests run Debian's server (`java` is on the machine).
  zookeeper
  # The chaos suite: network namespaces, veths and a bridge (iproute2) and partitions as
  # nftables drop rules inside the namespaces.
  iproute2
  nftables
)

log() { printf '[install-deps] %s\n' "$*"; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    log "not root and no sudo: cannot install packages"; exit 1
  fi
fi

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg -s "$p" 2>/dev/null | grep -q '^Status: install ok installed'; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing: ${missing[*]}"
  # Keep Debian from creating (and starting) a `main` cluster on 5432 when postgresql-15
  # gets installed.
  "${SUDO[@]}" mkdir -p /etc/postgresql-common/createcluster.d
  if [ ! -e /etc/postgresql-common/createcluster.d/spilo-no-main.conf ]; then
    echo 'create_main_cluster = false' | "${SUDO[@]}" tee /etc/postgresql-common/createcluster.d/spilo-no-main.conf >/dev/null
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "all packages present"
fi

# Debian's `main` cluster, if one exists: stop it and keep it from starting again.
if command -v pg_lsclusters >/dev/null 2>&1; then
  while read -r ver name _port status _rest; do
    if [ "$ver" != "15" ] || [ "$name" != "main" ]; then continue; fi
    if [ "$status" = "online" ]; then
      log "stopping Debian's PostgreSQL 15/main cluster"
      "${SUDO[@]}" pg_ctlcluster 15 main stop || true
    fi
    if [ -f /etc/postgresql/15/main/start.conf ] && ! grep -qx 'manual' /etc/postgresql/15/main/start.conf; then
      echo manual | "${SUDO[@]}" tee /etc/postgresql/15/main/start.conf >/dev/null || true
    fi
  done < <(pg_lsclusters --no-header 2>/dev/null || true)
fi
# Debian's etcd-server package may start a system etcd on 2379; tests pick free ports, so it
# is harmless, but the demo and CI do not need it.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  "${SUDO[@]}" systemctl stop etcd || true
fi

# Rust toolchain components used by scripts/test.sh.
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi
if command -v rustup >/dev/null 2>&1; then
  installed=$(rustup component list --installed 2>/dev/null || true)
  for c in rustfmt clippy; do
    if ! grep -q "^$c" <<<"$installed"; then
      log "adding rust component $c"
      rustup component add "$c" || log "WARNING: could not add $c"
    fi
  done
fi
for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    log "WARNING: cargo $tool is not available"
  fi
done

# Debian's haproxy and prometheus packages start system services; the tests run their own
# haproxy on free ports and only need promtool, so keep both stopped.
if command -v systemctl >/dev/null 2>&1; then
  for svc in haproxy prometheus; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then
      "${SUDO[@]}" systemctl stop "$svc" || true
    fi
  done
fi

# An unmodified patronictl (Patroni from PyPI) in a world-readable virtualenv for the
# patronictl integration test (tests/harness/tools.rs looks for it here, or in
# $SPILO_PATRONI_VENV). Debian's /usr/bin/python3, not whatever python3 is first on PATH.
PATRONI_VENV="${SPILO_PATRONI_VENV:-/opt/spilo-test-venv}"
PATRONI_SPEC="${SPILO_PATRONI_SPEC:-patroni[etcd3,psycopg3]>=4,<5}"
if [ -x "$PATRONI_VENV/bin/patronictl" ] && "$PATRONI_VENV/bin/patronictl" version >/dev/null 2>&1; then
  log "patronictl present in $PATRONI_VENV ($("$PATRONI_VENV/bin/patronictl" version 2>/dev/null | head -n1))"
else
  log "installing $PATRONI_SPEC into $PATRONI_VENV"
  "${SUDO[@]}" rm -rf "$PATRONI_VENV"
  "${SUDO[@]}" /usr/bin/python3 -m venv "$PATRONI_VENV"
  "${SUDO[@]}" "$PATRONI_VENV/bin/pip" install --quiet --disable-pip-version-check "$PATRONI_SPEC"
  "${SUDO[@]}" chmod -R a+rX "$PATRONI_VENV"
  "$PATRONI_VENV/bin/patronictl" version >/dev/null
fi

for bin in /usr/lib/postgresql/15/bin/postgres /usr/bin/etcd /usr/bin/etcdctl \
  /usr/share/zookeeper/bin/zkServer.sh /usr/sbin/haproxy /usr/bin/promtool \
  "$PATRONI_VENV/bin/patronictl"; do
  [ -x "$bin" ] || { log "missing $bin after install"; exit 1; }
done
log "ok"
