#!/usr/bin/env bash
# Installs what spilo's build, demo, benchmarks and tests need on Debian 12, then checks that
# every tool actually works. Idempotent: installs only missing packages (apt-get update only
# when something is missing) and never leaves Debian's own `main` PostgreSQL cluster holding
# port 5432.
#
#   scripts/install-deps.sh           install what is missing, then check
#   scripts/install-deps.sh --check   only check (installs nothing); exit 1 naming what is missing
#
# Every package is named here, recommends included: apt-get runs with --no-install-recommends,
# so a package that is only *recommended* by another (libprotobuf-dev by protobuf-compiler) is
# missing on a fresh machine unless it is in this list. The check at the end proves each tool
# works (protoc compiles a file importing a well-known type, pg_config says 15, ...), so a
# missing piece fails here, by name, instead of deep inside a build.
set -euo pipefail

CHECK_ONLY=0
case "${1:-}" in
  --check) CHECK_ONLY=1 ;;
  "") ;;
  -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
  *) echo "install-deps.sh: unknown argument: $1 (use --check or nothing)" >&2; exit 2 ;;
esac

PACKAGES=(
  postgresql-15
  postgresql-server-dev-15
  etcd-server
  etcd-client
  # etcd-client (the crate) compiles etcd's .proto files at build time: protoc AND the
  # well-known types (google/protobuf/descriptor.proto), which are in libprotobuf-dev, a package
  # protobuf-compiler only recommends.
  protobuf-compiler
  libprotobuf-dev
  # TLS certificates for the etcd/ZooKeeper TLS tests are made with the openssl command.
  openssl
  # setpriv (run daemons as the postgres user) and runuser.
  util-linux
  wrk
  curl
  jq
  ca-certificates
  # The vendored Lua (mlua), aws-lc (rustls' crypto) and the C test plugin, compiled against
  # the plugin ABI header.
  gcc
  libc6-dev
  make
  # cargo-pgrx (scripts/install-pgext.sh) links OpenSSL through pkg-config, and pgrx's bindgen
  # loads libclang to read PostgreSQL's headers.
  pkg-config
  libssl-dev
  libclang-dev
  clang
  # Operations integration tests: a real load balancer, promtool (`prometheus`) for the
  # metrics format, and Debian's python3 venv for an unmodified patronictl from PyPI.
  haproxy
  prometheus
  python3
  python3-venv
  # ZooKeeper DCS backend tests run Debian's server, on a Java runtime named explicitly.
  zookeeper
  default-jre-headless
  # The chaos suite: network namespaces, veths and a bridge (iproute2) and partitions as
  # nftables drop rules inside the namespaces.
  iproute2
  nftables
  # The archive benchmark (scripts/bench.sh --only archive) compares against pgBackRest and
  # barman-cloud-wal-archive (a Python tool on boto3, named explicitly).
  pgbackrest
  barman-cli-cloud
  python3-boto3
)

log() { printf '[install-deps] %s\n' "$*"; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    log "not root and no sudo: cannot install packages"; exit 1
  fi
fi

if [ "$CHECK_ONLY" -eq 0 ]; then
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
PATRONI_SPEC="${SPILO_PATRONI_SPEC:-patroni[etcd3,zookeeper,psycopg3]==4.1.5}"
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

# Local S3 servers for the S3 storage backend's tests (tests/harness/s3.rs looks for them here,
# or at $SPILO_MOTO_VENV / $SPILO_S3S_FS). moto in server mode, from PyPI, in a virtualenv of
# its own (Debian's python3): 5.2.5, because 5.2.1 answers CompleteMultipartUpload with the
# XML root CompleteMultipartUploadResponse, which the Rust AWS SDK refuses.
MOTO_VENV="${SPILO_MOTO_VENV:-/opt/spilo-moto-venv}"
MOTO_VERSION=5.2.5
moto_version() { "$MOTO_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null; }
if [ -x "$MOTO_VENV/bin/moto_server" ] && [ "$(moto_version)" = "$MOTO_VERSION" ]; then
  log "moto $MOTO_VERSION present in $MOTO_VENV"
else
  log "installing moto[server]==$MOTO_VERSION into $MOTO_VENV"
  if [ ! -x "$MOTO_VENV/bin/pip" ]; then
    "${SUDO[@]}" rm -rf "$MOTO_VENV"
    "${SUDO[@]}" /usr/bin/python3 -m venv "$MOTO_VENV"
  fi
  "${SUDO[@]}" "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
  "${SUDO[@]}" chmod -R a+rX "$MOTO_VENV"
fi
# cfn-lint (the CloudFormation linter the template tests run), in the same virtualenv: moto[server]
# brings one, pinned here so that a new rule upstream cannot turn CI red on its own.
CFN_LINT_VERSION=1.58.0
if [ "$("$MOTO_VENV/bin/cfn-lint" --version 2>/dev/null)" = "cfn-lint $CFN_LINT_VERSION" ]; then
  log "cfn-lint $CFN_LINT_VERSION present in $MOTO_VENV"
else
  log "installing cfn-lint==$CFN_LINT_VERSION into $MOTO_VENV"
  "${SUDO[@]}" "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "cfn-lint==$CFN_LINT_VERSION"
  "${SUDO[@]}" chmod -R a+rX "$MOTO_VENV"
fi
# s3s-fs, an S3 server over a directory (Rust, from crates.io): 0.14.1 is the newest that
# builds with Rust 1.95 (0.15 and later need 1.96). About 4 minutes on 2 cores.
S3S_FS_ROOT="${SPILO_S3S_FS_ROOT:-/opt/spilo-s3s-fs}"
S3S_FS_VERSION=0.14.1
s3s_fs_version() { "$S3S_FS_ROOT/bin/s3s-fs" --version 2>/dev/null; }
if [ "$(s3s_fs_version)" = "s3s-fs $S3S_FS_VERSION" ]; then
  log "s3s-fs $S3S_FS_VERSION present in $S3S_FS_ROOT"
else
  log "installing s3s-fs $S3S_FS_VERSION into $S3S_FS_ROOT (cargo install)"
  "${SUDO[@]}" env PATH="$PATH" cargo install s3s-fs --version "=$S3S_FS_VERSION" --features binary \
    --locked --force --root "$S3S_FS_ROOT"
  "${SUDO[@]}" chmod -R a+rX "$S3S_FS_ROOT"
fi

fi # CHECK_ONLY

# ---- The check: every tool the build, demo, benchmarks and tests use, actually working. ----
PATRONI_VENV="${SPILO_PATRONI_VENV:-/opt/spilo-test-venv}"
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi
problems=()
# check WHAT HINT CMD...: runs CMD quietly; records "WHAT (HINT)" when it fails.
check() {
  local what=$1 hint=$2; shift 2
  if ! "$@" >/dev/null 2>&1; then problems+=("$what: $hint"); fi
}
CHECK_DIR=$(mktemp -d /tmp/spilo-deps-check-XXXXXX)
trap 'rm -rf "$CHECK_DIR"' EXIT
chmod 755 "$CHECK_DIR"

cat >"$CHECK_DIR/wkt.proto" <<'PROTO'
syntax = "proto3";
import "google/protobuf/descriptor.proto";
message SpiloCheck { google.protobuf.FileDescriptorProto file = 1; }
PROTO
check "protoc compiling a file that imports google/protobuf/descriptor.proto" \
  "packages protobuf-compiler and libprotobuf-dev" \
  protoc --proto_path="$CHECK_DIR" --include_imports --descriptor_set_out="$CHECK_DIR/wkt.pb" "$CHECK_DIR/wkt.proto"
# (Output captured first: with pipefail, `grep -q` closing the pipe early fails the writer.)
pg15() { local v; v=$(/usr/lib/postgresql/15/bin/pg_config --version) && [[ $v == "PostgreSQL 15."* ]]; }
check "pg_config --version saying PostgreSQL 15" "packages postgresql-15 and postgresql-server-dev-15" pg15
pg15_headers() { [ -f "$(/usr/lib/postgresql/15/bin/pg_config --includedir-server)/postgres.h" ]; }
check "PostgreSQL 15 server headers (for the pgrx extension)" "package postgresql-server-dev-15" pg15_headers
check "postgres (PostgreSQL 15 server)" "package postgresql-15" /usr/lib/postgresql/15/bin/postgres --version
check "initdb" "package postgresql-15" /usr/lib/postgresql/15/bin/initdb --version
check "pg_basebackup" "package postgresql-15" /usr/lib/postgresql/15/bin/pg_basebackup --version
check "pg_rewind" "package postgresql-15" /usr/lib/postgresql/15/bin/pg_rewind --version
check "psql" "package postgresql-client-15" psql --version
check "the postgres OS user" "package postgresql-15 creates it" id -u postgres
check "etcd" "package etcd-server" etcd --version
check "etcdctl" "package etcd-client" env ETCDCTL_API=3 etcdctl version
check "java" "package default-jre-headless" java -version
zk_present() { local v; v=$(/usr/share/zookeeper/bin/zkServer.sh version 2>&1) && [[ $v == *"Apache ZooKeeper, version 3."* ]]; }
check "zkServer.sh (ZooKeeper server)" "package zookeeper" zk_present
check "haproxy" "package haproxy" haproxy -v
check "promtool" "package prometheus" promtool --version
wrk_works() { local v; v=$(wrk --version 2>&1 || true); [[ $v == wrk* ]]; }
check "wrk" "package wrk" wrk_works
check "nft" "package nftables" nft --version
check "ip" "package iproute2" ip -V
check "setpriv" "package util-linux" setpriv --version
check "openssl" "package openssl" openssl version
check "pgbackrest" "package pgbackrest" pgbackrest version
check "barman-cloud-wal-archive" "packages barman-cli-cloud and python3-boto3" barman-cloud-wal-archive --version
check "boto3 for barman-cloud" "package python3-boto3" /usr/bin/python3 -c "import boto3"
check "curl" "package curl" curl --version
check "jq" "package jq" jq --version
cat >"$CHECK_DIR/c.c" <<'C'
#include <stdio.h>
int main(void) { return puts("ok") < 0; }
C
check "gcc compiling and linking a C program" "packages gcc and libc6-dev" \
  gcc -o "$CHECK_DIR/c" "$CHECK_DIR/c.c"
check "pkg-config finding OpenSSL (for cargo-pgrx)" "packages pkg-config and libssl-dev" \
  pkg-config --exists openssl
libclang_present() { compgen -G '/usr/lib/llvm-*/lib/libclang.so*' >/dev/null || compgen -G '/usr/lib/x86_64-linux-gnu/libclang*.so*' >/dev/null; }
check "libclang (for pgrx's bindgen)" "package libclang-dev" libclang_present
check "python3 -m venv (Debian's python3)" "packages python3 and python3-venv" \
  /usr/bin/python3 -m venv "$CHECK_DIR/venv"
check "patronictl in $PATRONI_VENV" "created by scripts/install-deps.sh from PyPI" \
  "$PATRONI_VENV/bin/patronictl" version
MOTO_VENV="${SPILO_MOTO_VENV:-/opt/spilo-moto-venv}"
moto_ok() {
  local v; v=$("$MOTO_VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))') &&
    [ "$v" = 5.2.5 ] && "$MOTO_VENV/bin/moto_server" --help
}
check "moto_server 5.2.5 in $MOTO_VENV" "created by scripts/install-deps.sh from PyPI" moto_ok
# The load-balancer tests set up and read back moto's EC2 and ELB with boto3 (a dependency of
# moto[server], in the same virtualenv).
check "boto3 (ec2, elb clients) in $MOTO_VENV" "installed with moto[server] by scripts/install-deps.sh" \
  "$MOTO_VENV/bin/python" -c "import boto3; boto3.client('elb', region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s'); boto3.client('ec2', region_name='us-east-1', aws_access_key_id='k', aws_secret_access_key='s')"
cfn_lint_ok() {
  local f="$CHECK_DIR/t.json"
  echo '{"Resources": {"B": {"Type": "AWS::S3::Bucket"}}}' >"$f" &&
    [ "$("$MOTO_VENV/bin/cfn-lint" --version)" = "cfn-lint 1.58.0" ] && "$MOTO_VENV/bin/cfn-lint" "$f"
}
check "cfn-lint 1.58.0 in $MOTO_VENV (linting a template)" "installed by scripts/install-deps.sh from PyPI" cfn_lint_ok
S3S_FS_ROOT="${SPILO_S3S_FS_ROOT:-/opt/spilo-s3s-fs}"
s3s_fs_ok() {
  local v; v=$("$S3S_FS_ROOT/bin/s3s-fs" --version) && [ "$v" = "s3s-fs 0.14.1" ] &&
    "$S3S_FS_ROOT/bin/s3s-fs" --help
}
check "s3s-fs 0.14.1 in $S3S_FS_ROOT/bin" "cargo install s3s-fs --features binary (scripts/install-deps.sh)" s3s_fs_ok
check "cargo" "the Rust toolchain (rustup)" cargo --version
check "cargo fmt" "rustup component add rustfmt" cargo fmt --version
check "cargo clippy" "rustup component add clippy" cargo clippy --version

if [ "${#problems[@]}" -gt 0 ]; then
  log "these tools are missing or do not work:"
  for p in "${problems[@]}"; do log "  - $p"; done
  if [ "$CHECK_ONLY" -eq 1 ]; then
    log "run ./scripts/install-deps.sh (as root) to install them"
  fi
  exit 1
fi
log "ok: every tool works"
