#!/usr/bin/env bash
# Benchmarks that print figures (not tests): builds in release mode and runs bench/ against a
# real etcd (and, for the DCS load part, a real ZooKeeper) and 3-node clusters. Extra arguments
# go to spilo-bench (--rounds N, --ttl S, --dcs-load-secs N, --only dcs-load, …).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi
./scripts/install-deps.sh
# The spilo extension: the daemon archives through its archive module when PostgreSQL has it.
./scripts/install-pgext.sh
# The whole workspace, as scripts/demo.sh and scripts/symbol-order.sh build it: the daemon's
# symbols (and so its layout, spilo-core/build.rs) depend on the features the build unifies.
cargo build --release
# The daemon is linked with its running code gathered (spilo-core/build.rs); how much of the
# list still names functions of this build (scripts/symbol-order.sh writes it anew).
if [ -s spilo-core/symbol-order.txt ]; then
  have=$(nm --defined-only target/release/spilo | awk 'NF == 3 { print $3 }' | sort -u |
    comm -12 - <(sort -u spilo-core/symbol-order.txt) | wc -l)
  echo "symbol order: $have of $(wc -l <spilo-core/symbol-order.txt) functions listed in" \
    "spilo-core/symbol-order.txt are in the daemon (re-run scripts/symbol-order.sh when far fewer)"
fi
SPILO_BIN_DIR="$PWD/target/release" exec ./target/release/spilo-bench "$@"
