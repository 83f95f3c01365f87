#!/usr/bin/env bash
# Benchmarks that print figures (not tests): builds in release mode and runs bench/ against a
# real etcd (and, for the DCS load part, a real ZooKeeper) and 3-node clusters. Extra arguments
# go to spilo-bench (--rounds N, --ttl S, --dcs-load-secs N, --only dcs-load, …).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi
./scripts/install-deps.sh
cargo build --release -p spilo-core -p spilo-bench -p spilo-storage-s3-plugin -p spilo-lb-elb
SPILO_BIN_DIR="$PWD/target/release" exec ./target/release/spilo-bench "$@"
