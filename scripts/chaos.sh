#!/usr/bin/env bash
# The chaos suite on real processes: three spilo nodes and a 3-server DCS, each in its own
# network namespace, under random faults from a seed, with split-brain, lost-write and
# convergence checkers; prints the report and exits non-zero when a check fails.
#
#   ./scripts/chaos.sh --minutes N --seed S [--dcs etcd|zookeeper] [--sync on|off]
#                      [--ttl S] [--loop-wait S] [--retry-timeout S] [--events N]
#                      [--report FILE] [--keep] [--lab N] [--no-setup]
#
# Needs root (namespaces, nftables). Installs what it needs first (Debian packages, the
# extension, a debug build) unless --no-setup is given (scripts/test.sh has done that already).
set -euo pipefail

cd "$(dirname "$0")/.."
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi

setup=1
args=()
for a in "$@"; do
  if [ "$a" = "--no-setup" ]; then setup=0; else args+=("$a"); fi
done

# shellcheck source=scripts/lib/setup.sh
. scripts/lib/setup.sh
need_root chaos.sh "the suite creates network namespaces"
setup_or_check "$setup"
if [ "$setup" -eq 1 ]; then
  cargo build -p spilo-core -p spilo-tests --bins
fi

target_dir="${CARGO_TARGET_DIR:-target}"
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
exec env SPILO_BIN_DIR="$target_dir/debug" "$target_dir/debug/spilo-chaos" "${args[@]}"
