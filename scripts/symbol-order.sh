#!/usr/bin/env bash
# Writes spilo-core/symbol-order.txt: the functions the `spilo` daemon runs, the busiest first,
# which the release link places together (spilo-core/build.rs) so the daemon's resident text
# is about the size of the code it runs instead of nearly the whole binary.
#
#   scripts/symbol-order.sh            build, profile, write the file, relink with it
#
# How: a release build; etcd and two daemons on local ports, each under valgrind's callgrind
# (which lists every function that ran), through what a daemon does in its life: bootstrap
# (initdb) and a replica's copy, the REST GET endpoints, a reload, a config PATCH and a
# replica's restart, a switchover each way, SIGTERM hand-overs, restarts that rejoin as a
# replica, a failover after SIGKILL of the primary's daemon and postmaster, and the old
# primary's return through pg_rewind; then the HA benchmark's scenario. Then the profiles are
# read (scripts/lib/callgrind_symbols.py) and the daemon is linked again with the new file.
# Re-run it when the release build's symbols have drifted from the file (scripts/bench.sh
# prints how many of its names the binary still has); a stale file costs memory, never
# behaviour. Needs root (the daemons run as the postgres user), PostgreSQL 15, etcd, valgrind;
# a failed run stops what it started and keeps its logs and profiles, naming the directory.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi

# shellcheck source=scripts/lib/setup.sh
. scripts/lib/setup.sh
# shellcheck source=scripts/lib/template.sh
. scripts/lib/template.sh
need_root symbol-order.sh "the daemons run as the postgres user"
if ! command -v valgrind >/dev/null 2>&1; then
  apt-get install -y -qq --no-install-recommends valgrind
fi
valgrind --version >/dev/null
for tool in etcd etcdctl curl /usr/lib/postgresql/15/bin/initdb; do
  command -v "$tool" >/dev/null 2>&1 || { echo "symbol-order.sh: $tool is missing (scripts/install-deps.sh)" >&2; exit 2; }
done

cargo build --release

WORK=$(mktemp -d /tmp/spilo-symbol-order.XXXXXX)
chmod 755 "$WORK"
PIDS=() # the processes started and not yet stopped
finish() {
  local rc=$?
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 2
  pkill -f "postgres -D $WORK" 2>/dev/null || true
  if [ "$rc" -eq 0 ]; then
    rm -rf "$WORK"
  else
    echo "symbol-order.sh: failed; logs and profiles kept in $WORK" >&2
  fi
}
trap finish EXIT
die() {
  echo "symbol-order.sh: $*" >&2
  exit 1
}

cp target/release/spilo "$WORK/spilo"
chmod 755 "$WORK/spilo"
BASE=$((20000 + RANDOM % 20000))
ETCD=$BASE API1=$((BASE + 8)) API2=$((BASE + 9)) PG1=$((BASE + 32)) PG2=$((BASE + 33))

etcd --data-dir "$WORK/etcd" --listen-client-urls "http://127.0.0.1:$ETCD" \
  --advertise-client-urls "http://127.0.0.1:$ETCD" \
  --listen-peer-urls "http://127.0.0.1:$((BASE + 1))" >"$WORK/etcd.log" 2>&1 &
PIDS+=($!)

node_yml() { # NAME API PG: the node template the demo and the tests render
  REST_AUTH= DYNAMIC_EXTRA= BOOTSTRAP_EXTRA= PG_PARAMETERS= POSTGRESQL_EXTRA= EXTRA= \
  SCOPE=symbols NAME=$1 API_ADDR="127.0.0.1:$2" PG_ADDR="127.0.0.1:$3" \
  DCS=$'etcd3:\n  hosts: '"127.0.0.1:$ETCD"$'\n' \
  TTL=10 LOOP_WAIT=2 RETRY_TIMEOUT=3 INITDB=$'  - encoding: UTF8\n' \
  PG_HBA=$'  - local all all trust\n  - host replication replicator 127.0.0.1/32 scram-sha-256\n  - host all all 127.0.0.1/32 scram-sha-256\n' \
  DATA_DIR="$WORK/$1" PG_BIN=/usr/lib/postgresql/15/bin PGPASS="$WORK/pgpass.$1" \
  SUPERUSER_PASSWORD=pw REPLICATION_PASSWORD=pw TAGS=$'  nofailover: false\n' \
    render_node_template "$WORK/$1.yml" || die "the node configuration of $1"
}
node_yml n1 "$API1" "$PG1"
node_yml n2 "$API2" "$PG2"
chown -R postgres "$WORK"

start() { # NAME TAG
  setpriv --reuid=postgres --regid=postgres --init-groups \
    valgrind --tool=callgrind --demangle=no --callgrind-out-file="$WORK/cg.$2" \
    "$WORK/spilo" "$WORK/$1.yml" >"$WORK/$2.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$1=$!"
}
wait_for() { # URL SECONDS
  for _ in $(seq 1 "$2"); do curl -sf -o /dev/null "$1" && return 0; sleep 1; done
  die "$1 did not answer 200 within $2 s"
}
rest() { # PORT...
  for p in "$@"; do
    for e in / /patroni /primary /replica /health /cluster /history /config /metrics \
      /liveness /readiness /leader /read-only /sync /async; do
      curl -s -o /dev/null "127.0.0.1:$p$e" || true
    done
  done
}
forget() { # PID: no longer ours to signal
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}
stop() { # NAME: SIGTERM (a hand-over when it leads), at most 2 minutes to exit
  local pid
  pid=$(eval "echo \$PID_$1")
  kill -TERM "$pid" 2>/dev/null || die "$1 (pid $pid) was not running"
  for _ in $(seq 1 120); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
    die "$1 (pid $pid) did not exit within 2 minutes of SIGTERM"
  fi
  wait "$pid" || true
  forget "$pid"
}
switchover() { # PORT LEADER CANDIDATE: retried while the cluster settles
  for _ in $(seq 1 30); do
    curl -sf -XPOST -d "{\"leader\":\"$2\",\"candidate\":\"$3\"}" "127.0.0.1:$1/switchover" &&
      { echo; return 0; }
    sleep 2
  done
  die "POST /switchover from $2 to $3 was refused for a minute"
}
writes() { # PORT...: the REST calls that change something, harmlessly
  for p in "$@"; do
    curl -s -o /dev/null -XPOST "127.0.0.1:$p/reload" || true
    curl -s -o /dev/null -XPATCH -d '{"loop_wait":2}' "127.0.0.1:$p/config" || true
  done
}

sleep 2
start n1 n1
wait_for "http://127.0.0.1:$API1/primary" 180
start n2 n2
wait_for "http://127.0.0.1:$API2/replica" 240
rest "$API1" "$API2"
sleep 6
writes "$API1" "$API2"
curl -s -o /dev/null -XPOST -d '{}' "127.0.0.1:$API2/restart" || true # the replica's PostgreSQL
wait_for "http://127.0.0.1:$API2/replica" 240
switchover "$API1" n1 n2
wait_for "http://127.0.0.1:$API1/replica" 120
switchover "$API2" n2 n1
wait_for "http://127.0.0.1:$API2/replica" 120
rest "$API1" "$API2"
stop n1                                       # hand-over to n2
wait_for "http://127.0.0.1:$API2/primary" 120
start n1 n1b                                  # rejoins as a replica
wait_for "http://127.0.0.1:$API1/replica" 240
rest "$API1" "$API2"
sleep 6
stop n2                                       # hand-over to n1
wait_for "http://127.0.0.1:$API1/primary" 120
start n2 n2b
wait_for "http://127.0.0.1:$API2/replica" 240
stop n1                                       # hand-over to n2
wait_for "http://127.0.0.1:$API2/primary" 120
# An unprofiled n1 to be killed: SIGKILL of a daemon and its postmaster loses its profile.
setpriv --reuid=postgres --regid=postgres --init-groups "$WORK/spilo" "$WORK/n1.yml" \
  >"$WORK/n1-plain.log" 2>&1 &
PIDS+=($!)
PID_n1=$!
wait_for "http://127.0.0.1:$API1/replica" 240
stop n2                                       # hand-over to the plain n1
wait_for "http://127.0.0.1:$API1/primary" 120
start n2 n2c
wait_for "http://127.0.0.1:$API2/replica" 240
kill -KILL "$PID_n1"                          # failover: n2 takes the lock once it expires
forget "$PID_n1"
pkill -KILL -f "postgres -D $WORK/n1" || true
wait_for "http://127.0.0.1:$API2/primary" 180
start n1 n1c                                  # the old primary rejoins through pg_rewind
wait_for "http://127.0.0.1:$API1/replica" 240
rest "$API1" "$API2"
stop n1
stop n2

# Then the HA benchmark's own scenario (3 nodes, the node template's password authentication,
# SIGKILL failovers, hand-overs, switchovers, wrk on /primary) with every daemon under
# callgrind; the profiles are dumped as they go (every 20M basic blocks), so a daemon the
# benchmark SIGKILLs still counts up to its last dump. Its figures mean nothing under valgrind; only the profiles are kept.
mkdir -p "$WORK/bin"
{
  echo '#!/bin/sh'
  echo "exec valgrind --tool=callgrind --demangle=no --dump-every-bb=20000000 \\"
  echo "  --callgrind-out-file=$WORK/cg.bench.%p $WORK/spilo \"\$@\""
} >"$WORK/bin/spilo"
cp target/release/spiloctl "$WORK/bin/spiloctl"
chmod 755 "$WORK/bin" "$WORK/bin/spilo" "$WORK/bin/spiloctl"
chown postgres "$WORK"
SPILO_BIN_DIR="$WORK/bin" ./target/release/spilo-bench --only ha --no-patroni --rounds 2 \
  --ttl 10 --idle-secs 5 --wrk-secs 3 --switchover-rounds 2 >"$WORK/bench.log" 2>&1 ||
  echo "symbol-order.sh: the benchmark under valgrind ended with an error (profiles kept)"

python3 scripts/lib/callgrind_symbols.py /spilo "$WORK"/cg.* >"$WORK/order.txt"
# A run whose profiles came out empty must not replace a good list with a short one.
count=$(wc -l <"$WORK/order.txt")
[ "$count" -ge 1000 ] || die "only $count functions in the profiles: spilo-core/symbol-order.txt left as it was"
mv "$WORK/order.txt" spilo-core/symbol-order.txt
echo "symbol-order.sh: $count functions in spilo-core/symbol-order.txt"
cargo build --release
