#!/usr/bin/env bash
# A 3-node spilo cluster on this machine: bootstrap, a row, SIGKILL of the primary (daemon and
# postmaster), failover, the old primary back as a replica on the new timeline, then teardown.
#
#   scripts/demo.sh              run the demo and clean up
#   scripts/demo.sh --keep       leave the cluster running; prints how to connect and stop
#   scripts/demo.sh --bin-dir D  use spilo/spiloctl from D instead of `cargo build --release`
#
# Needs root (daemons run as the postgres OS user via setpriv).
set -euo pipefail

KEEP=0
BIN_SRC=""
while [ $# -gt 0 ]; do
  case "$1" in
    --keep) KEEP=1 ;;
    --bin-dir) BIN_SRC=${2:?--bin-dir needs a directory}; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

cd "$(dirname "$0")/.."
REPO=$(pwd)
# shellcheck source=scripts/lib/template.sh
. scripts/lib/template.sh
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi
[ "$(id -u)" -eq 0 ] || { echo "demo.sh must run as root (it starts the daemons as postgres)" >&2; exit 1; }

PG_BIN=/usr/lib/postgresql/15/bin
SCOPE=demo
NODES=(node1 node2 node3)
SU_PASS=postgres-secret
TTL=10

say()  { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die()  { printf '\nERROR: %s\n' "$*" >&2; exit 1; }
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

# wait_until SECONDS DESCRIPTION CMD...: polls CMD every 0.5 s.
wait_until() {
  local timeout=$1 what=$2; shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      show_logs
      die "timed out after ${timeout}s waiting for $what"
    fi
    sleep 0.5
  done
}

# A TCP port on 127.0.0.1 nobody listens on and not handed out yet.
USED_PORTS=" "
free_port() {
  local p
  while :; do
    p=$((20000 + RANDOM % 12000))  # below the ephemeral range (32768+)
    case "$USED_PORTS" in *" $p "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      USED_PORTS+="$p "
      echo "$p"
      return
    fi
  done
}

say "Dependencies"
./scripts/install-deps.sh
say "The spilo SQL extension (cargo pgrx install)"
./scripts/install-pgext.sh

if [ -z "$BIN_SRC" ]; then
  say "Building (cargo build --release)"
  cargo build --release
  BIN_SRC="$REPO/target/release"
fi
for b in spilo spiloctl; do [ -x "$BIN_SRC/$b" ] || die "$BIN_SRC/$b not found"; done

WORK=$(mktemp -d /tmp/spilo-demo-XXXXXX)
chmod 755 "$WORK"
BIN="$WORK/bin"
mkdir -p "$BIN"
cp "$BIN_SRC/spilo" "$BIN_SRC/spiloctl" "$BIN/"
chmod 755 "$BIN" "$BIN/spilo" "$BIN/spiloctl"

declare -A API PG DIR
ETCD_PID=""
ETCD_PORT=$(free_port)
ETCD_PEER=$(free_port)
for n in "${NODES[@]}"; do
  API[$n]=$(free_port); PG[$n]=$(free_port); DIR[$n]="$WORK/$n"
done

daemon_pid() { cat "${DIR[$1]}/spilo.pid" 2>/dev/null || true; }
postmaster_pid() { head -n1 "${DIR[$1]}/data/postmaster.pid" 2>/dev/null || true; }

stop_all() {
  local n pid
  for n in "${NODES[@]}"; do
    pid=$(daemon_pid "$n")
    if [ -n "$pid" ]; then kill -TERM "$pid" 2>/dev/null || true; fi
  done
  for n in "${NODES[@]}"; do
    pid=$(daemon_pid "$n")
    if [ -n "$pid" ]; then
      for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for n in "${NODES[@]}"; do
    if [ -f "${DIR[$n]}/data/postmaster.pid" ]; then
      (cd /tmp && as_pg "$PG_BIN/pg_ctl" -D "${DIR[$n]}/data" stop -m fast -w -t 30 >/dev/null 2>&1) || true
    fi
  done
  if [ -n "$ETCD_PID" ]; then kill "$ETCD_PID" 2>/dev/null || true; fi
}

show_logs() {
  local n
  for n in "${NODES[@]}"; do
    [ -f "${DIR[$n]}/spilo.log" ] || continue
    echo "----- $n: last 20 lines of ${DIR[$n]}/spilo.log -----" >&2
    tail -n 20 "${DIR[$n]}/spilo.log" >&2
  done
}

cleanup() {
  local rc=$?
  if [ "$KEEP" -eq 1 ]; then
    [ "$rc" -eq 0 ] || echo "demo failed (exit $rc); --keep: everything left running in $WORK" >&2
    return
  fi
  say "Stopping everything"
  stop_all
  rm -rf "$WORK"
  info "removed $WORK"
}
trap cleanup EXIT

say "etcd on 127.0.0.1:$ETCD_PORT"
# sh writes its pid, then execs etcd: the pid file holds etcd's pid.
# shellcheck disable=SC2016
setsid -f sh -c 'echo $$ > "$0/etcd.pid"; exec "$@"' "$WORK" /usr/bin/etcd \
  --name demo --data-dir "$WORK/etcd" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
  --initial-cluster "demo=http://127.0.0.1:$ETCD_PEER" --logger zap --log-outputs stderr \
  >"$WORK/etcd.log" 2>&1 < /dev/null
wait_until 10 "etcd's pid file" test -s "$WORK/etcd.pid"
ETCD_PID=$(cat "$WORK/etcd.pid")
wait_until 30 "etcd to be healthy" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

# The node configuration: examples/node.template.yml (the template the tests and the chaos
# suite render too), its ${NAME} placeholders filled from the environment
# (scripts/lib/template.sh).
write_config() {
  local n=$1
  mkdir -p "${DIR[$n]}"
  REST_AUTH= DYNAMIC_EXTRA= BOOTSTRAP_EXTRA= PG_PARAMETERS= POSTGRESQL_EXTRA= \
  EXTRA=$'storage:\n  type: fs\n  path: '"$STORE"$'\nbackup:\n  schedule: "0 1 * * *"\n  retain:\n    count: 3\n' \
  SCOPE=$SCOPE NAME=$n API_ADDR="127.0.0.1:${API[$n]}" PG_ADDR="127.0.0.1:${PG[$n]}" \
  DCS=$'etcd3:\n  hosts: '"127.0.0.1:$ETCD_PORT"$'\n' \
  TTL=$TTL LOOP_WAIT=2 RETRY_TIMEOUT=3 \
  INITDB=$'  - encoding: UTF8\n  - data-checksums\n' \
  PG_HBA=$'  - local all all trust\n  - host replication replicator 127.0.0.1/32 scram-sha-256\n  - host all all 127.0.0.1/32 scram-sha-256\n' \
  DATA_DIR="${DIR[$n]}/data" PG_BIN=$PG_BIN PGPASS="${DIR[$n]}/pgpass" \
  SUPERUSER_PASSWORD=$SU_PASS REPLICATION_PASSWORD=rep-secret TAGS=$'  nofailover: false\n' \
    render_node_template "${DIR[$n]}/spilo.yml" || die "the node configuration of $n"
  chown -R postgres:postgres "${DIR[$n]}"
  chmod 755 "${DIR[$n]}"
  chmod 644 "${DIR[$n]}/spilo.yml"
}

start_node() {
  local n=$1
  echo "==== demo: starting $n ====" >>"${DIR[$n]}/spilo.log"
  chown postgres:postgres "${DIR[$n]}/spilo.log"
  rm -f "${DIR[$n]}/spilo.pid"
  # shellcheck disable=SC2016
  (cd "${DIR[$n]}" && HOME="${DIR[$n]}" NO_COLOR=1 setsid -f setpriv --reuid=postgres --regid=postgres --init-groups \
    sh -c 'echo $$ > "$0/spilo.pid"; exec "$@"' "${DIR[$n]}" "$BIN/spilo" "${DIR[$n]}/spilo.yml" \
    >>"${DIR[$n]}/spilo.log" 2>&1 < /dev/null)
  wait_until 10 "$n's pid file" test -s "${DIR[$n]}/spilo.pid"
  info "$n: spilo pid $(daemon_pid "$n"), REST 127.0.0.1:${API[$n]}, PostgreSQL 127.0.0.1:${PG[$n]}, log ${DIR[$n]}/spilo.log"
}

# /patroni's JSON (also sent with 503 when PostgreSQL is down).
patroni() { curl -sS --max-time 3 "http://127.0.0.1:${API[$1]}/patroni" 2>/dev/null || true; }
field() { patroni "$1" | jq -r ".$2 // empty" 2>/dev/null || true; }
is_role() { [ "$(field "$1" role)" = "$2" ] && [ "$(field "$1" state)" = "running" ]; }
psql_on() { local n=$1; shift; PGPASSWORD=$SU_PASS PGCONNECT_TIMEOUT=5 psql -X -q -h 127.0.0.1 -p "${PG[$n]}" -U postgres -d postgres -v ON_ERROR_STOP=1 "$@"; }
ctl() { "$BIN/spiloctl" -c "${DIR[node1]}/spilo.yml" "$@"; }

# The one node reporting role primary (state running), among the given ones.
primary_among() {
  local n found=""
  for n in "$@"; do
    if is_role "$n" primary; then [ -z "$found" ] || return 1; found=$n; fi
  done
  [ -n "$found" ] && echo "$found"
}
all_replicas_streaming() {
  local p=$1 n
  for n in "${NODES[@]}"; do
    [ "$n" = "$p" ] && continue
    is_role "$n" replica || return 1
  done
  [ "$(psql_on "$p" -tAc "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")" -ge 2 ]
}

say "Starting ${#NODES[@]} nodes (scope $SCOPE)"
# WAL and base backups go to a directory store (the embedded default; an S3 bucket in production).
STORE="$WORK/backups"
mkdir -p "$STORE"
chown postgres:postgres "$STORE"
info "backups and WAL: $STORE"
for n in "${NODES[@]}"; do write_config "$n"; done
for n in "${NODES[@]}"; do start_node "$n"; done

wait_until 180 "a primary" primary_among "${NODES[@]}"
PRIMARY=$(primary_among "${NODES[@]}")
wait_until 180 "two streaming replicas" all_replicas_streaming "$PRIMARY"
info "primary: $PRIMARY, timeline $(field "$PRIMARY" timeline)"

say "spiloctl list"
ctl list

say "Writing a row on the primary ($PRIMARY)"
psql_on "$PRIMARY" -c "CREATE TABLE demo (id serial PRIMARY KEY, msg text, at timestamptz DEFAULT now())" \
  -c "INSERT INTO demo (msg) VALUES ('written on $PRIMARY before the crash')"
has_row() { [ "$(psql_on "$1" -tAc "SELECT count(*) FROM demo" 2>/dev/null)" -ge 1 ] 2>/dev/null; }
for n in "${NODES[@]}"; do
  [ "$n" = "$PRIMARY" ] || wait_until 60 "the row on $n" has_row "$n"
done
info "the row is on every replica"

say "A base backup into the store, and the catalog"
ctl backup create
ctl backup list

OLD=$PRIMARY
OLD_TL=$(field "$OLD" timeline)
say "SIGKILL $OLD's daemon (pid $(daemon_pid "$OLD")) and postmaster (pid $(postmaster_pid "$OLD"))"
kill -KILL "$(daemon_pid "$OLD")"
kill -KILL "$(postmaster_pid "$OLD")"
START=$SECONDS
OTHERS=()
for n in "${NODES[@]}"; do [ "$n" = "$OLD" ] || OTHERS+=("$n"); done
wait_until $((TTL + 60)) "a new primary" primary_among "${OTHERS[@]}"
NEW=$(primary_among "${OTHERS[@]}")
NEW_TL=$(field "$NEW" timeline)
info "new primary: $NEW on timeline $NEW_TL (was $OLD on $OLD_TL), $((SECONDS - START)) s after the kill"
psql_on "$NEW" -c "SELECT * FROM demo"
psql_on "$NEW" -c "INSERT INTO demo (msg) VALUES ('written on $NEW after the failover')"

say "Restarting $OLD"
start_node "$OLD"
rejoined() {
  is_role "$OLD" replica && [ "$(field "$OLD" timeline)" = "$NEW_TL" ] &&
    [ "$(psql_on "$OLD" -tAc "SELECT status FROM pg_stat_wal_receiver")" = "streaming" ]
}
wait_until 180 "$OLD back as a replica streaming on timeline $NEW_TL" rejoined
has_rows() { [ "$(psql_on "$1" -tAc "SELECT count(*) FROM demo" 2>/dev/null)" -ge "$2" ] 2>/dev/null; }
wait_until 60 "the new row on $OLD" has_rows "$OLD" 2
info "$OLD streams from $NEW on timeline $NEW_TL; its copy of the table:"
psql_on "$OLD" -c "SELECT * FROM demo ORDER BY id"
# The member keys in the DCS catch up within an HA cycle or two.
listed_streaming() {
  [ "$(ctl list --format json | jq -r --arg m "$OLD" '.[] | select(.Member == $m) | .State')" = "streaming" ]
}
deadline=$((SECONDS + 30))
until listed_streaming 2>/dev/null || [ "$SECONDS" -ge "$deadline" ]; do sleep 1; done
listed_streaming 2>/dev/null || info "(note: spiloctl does not show $OLD as streaming yet)"
ctl list

say "WAL archived across the failover (the new timeline's history file included)"
psql_on "$NEW" -qc "SELECT pg_switch_wal()" >/dev/null
archived_history() { ctl wal list --format json | jq -e --arg h "$(printf '%08X' "$NEW_TL").history" 'any(.[]; .name == $h)' >/dev/null; }
wait_until 60 "the timeline $NEW_TL history file in the store" archived_history
ctl wal list

if [ "$KEEP" -eq 1 ]; then
  STOP="$WORK/stop.sh"
  {
    echo "#!/usr/bin/env bash"
    for n in "${NODES[@]}"; do echo "kill -TERM $(daemon_pid "$n") 2>/dev/null  # spilo $n"; done
    echo "sleep 5"
    for n in "${NODES[@]}"; do
      echo "setpriv --reuid=postgres --regid=postgres --init-groups $PG_BIN/pg_ctl -D ${DIR[$n]}/data stop -m fast 2>/dev/null"
    done
    echo "kill $ETCD_PID  # etcd"
    echo "rm -rf $WORK"
  } > "$STOP"
  chmod +x "$STOP"
  say "Cluster left running (--keep)"
  info "connect to the primary:"
  info "  PGPASSWORD=$SU_PASS psql -h 127.0.0.1 -p ${PG[$NEW]} -U postgres -d postgres"
  info "members:"
  info "  $BIN/spiloctl -c ${DIR[node1]}/spilo.yml list"
  info "stop everything (or run: bash $STOP):"
  sed -n '2,$p' "$STOP" | sed 's/^/      /'
else
  say "Demo complete"
fi
