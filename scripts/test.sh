#!/usr/bin/env bash
# The whole check: deps, formatting, clippy, build, unit tests, integration tests.
# Exits non-zero if any step fails; prints a summary at the end.
set -euo pipefail

cd "$(dirname "$0")/.."
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

# A fresh checkout gains nothing from incremental compilation, which keeps gigabytes of
# session data in target/: CI builds without it (a developer's own runs keep it).
if [ "${CI:-}" = "true" ]; then export CARGO_INCREMENTAL=0; fi

# Free space on the disks the run writes to (target/ and /tmp), printed at the start and after
# every step: a disk that fills mid-run fails every test after it, each for a reason of its
# own, and this line says why at once.
disk_free() {
  df -P -k . /tmp 2>/dev/null | awk 'NR > 1 && !seen[$1]++ { printf "%s%s %.1f GB free", sep, $6, $4 / 1048576; sep = ", " } END { print "" }'
}
echo "test.sh: disk: $(disk_free)"

LOGDIR=$(mktemp -d /tmp/spilo-test-logs-XXXXXX)
trap 'rm -rf "$LOGDIR"' EXIT

declare -a STEPS=()
declare -A RESULT=()
failed=0

# run NAME CMD...: runs a step, tees its output to $LOGDIR/NAME.log, records ok/FAIL.
run() {
  local name=$1; shift
  STEPS+=("$name")
  echo
  echo "===== [$name] $* ====="
  local start=$SECONDS
  if "$@" 2>&1 | tee "$LOGDIR/$name.log"; then
    RESULT[$name]="ok"
  else
    RESULT[$name]="FAIL"
    failed=1
  fi
  echo "===== [$name] ${RESULT[$name]} in $((SECONDS - start)) s (disk: $(disk_free)) ====="
}

# start_bg NAME CMD...: starts a step in the background; its output goes to $LOGDIR/NAME.log
# and is printed whole by wait_bg NAME, which records ok/FAIL.
declare -A BG_PID=() BG_START=()
start_bg() {
  local name=$1; shift
  STEPS+=("$name")
  echo
  echo "===== [$name] in the background: $* ====="
  BG_START[$name]=$SECONDS
  "$@" > "$LOGDIR/$name.log" 2>&1 &
  BG_PID[$name]=$!
}

wait_bg() {
  local name=$1
  if wait "${BG_PID[$name]}"; then RESULT[$name]="ok"; else RESULT[$name]="FAIL"; failed=1; fi
  echo
  echo "===== [$name] its output ====="
  cat "$LOGDIR/$name.log"
  echo "===== [$name] ${RESULT[$name]} in $((SECONDS - BG_START[$name])) s (disk: $(disk_free)) ====="
}

skip() {
  STEPS+=("$1")
  RESULT[$1]="skipped"
}

run deps ./scripts/install-deps.sh
# The PostgreSQL extension (cargo-pgrx, its fmt/clippy checks, installed into PostgreSQL 15).
run pgext ./scripts/install-pgext.sh --check
run fmt cargo fmt --all -- --check
run clippy cargo clippy --workspace --all-targets -- -D warnings
run build cargo build --workspace --all-targets
if [ "${RESULT[build]}" = "ok" ]; then
  # Unit tests and every test target but the integration suite.
  run unit-tests cargo test --workspace --exclude spilo-tests --no-fail-fast
  # The conformance suites (DCS: etcd single/cluster/TLS, ZooKeeper single/TLS/3-server
  # ensemble, the plugin; storage on a directory, moto and s3s-fs; load balancers) start their
  # own servers, one test at a time, and mostly wait on them: they run beside the integration
  # suite (about 7 minutes that no longer add to the total).
  start_bg conformance-tests cargo test -p spilo-tests --test conformance -- --test-threads=1
  # The integration suite drives real etcd/PostgreSQL clusters: one test at a time. It includes
  # the ZooKeeper-shape HA tests (zk_quorum_loss::: ensemble quorum loss, bootstrap over TLS),
  # which start their own ZooKeeper whatever SPILO_TEST_DCS says.
  # Each test cluster's lifetime goes into $LOGDIR/times (tests/harness/cluster.rs): the
  # slowest tests are listed after the run.
  run integration-tests env SPILO_TEST_TIMES="$LOGDIR/times" \
    cargo test -p spilo-tests --lib --bins --test integration -- --test-threads=1
  wait_bg conformance-tests
  if [ -s "$LOGDIR/times" ]; then
    echo
    echo "===== the 15 slowest integration tests (seconds their clusters ran) ====="
    awk '{ t[$2] += $1 } END { for (k in t) printf "%7.1f  %s\n", t[k], k }' "$LOGDIR/times" | sort -rn | awk 'NR <= 15' || true
  fi
  # The HA suite (bootstrap, replication, failover, rejoin, crash in place, hand-over, DCS loss,
  # duplicate names, manual failover) once more, on ZooKeeper: the same tests, another DCS.
  HA_SUITE="bootstrap:: failover::killed crash_in_place:: handover:: dcs_loss:: duplicate_name:: manual_failover:: terms::"
  run integration-zookeeper env SPILO_TEST_DCS=zookeeper cargo test -p spilo-tests --test integration -- \
    --test-threads=1 $HA_SUITE
  # And on etcd in production shape (three members, TLS with client certificates, a user): the
  # core of the suite, to keep CI near 30 minutes (SPILO_TEST_DCS=etcd-tls runs any test).
  run integration-etcd-tls env SPILO_TEST_DCS=etcd-tls cargo test -p spilo-tests --test integration -- \
    --test-threads=1 bootstrap:: failover::killed dcs_loss:: manual_failover::
  # And through the example third-party plugin (etcd's HTTP gateway, loaded via the C ABI).
  run integration-plugin env SPILO_TEST_DCS=etcd-plugin cargo test -p spilo-tests --test integration -- \
    --test-threads=1 failover::killed dcs_loss:: terms::
  # And through the same plugin's source built against the frozen ABI 1.0 SDK
  # (tests/plugins/abi-1.0): a plugin binary from before ABI 1.1 still runs a cluster, with
  # the term null (unknown) throughout. About a minute.
  run integration-plugin-abi10 env SPILO_TEST_DCS=etcd-plugin-abi10 cargo test -p spilo-tests --test integration -- \
    --test-threads=1 failover::killed terms::
  # The chaos suite, short: random faults on real processes in network namespaces, with the
  # split-brain, lost-write and convergence checkers; once on etcd with synchronous mode, once
  # on ZooKeeper without (./scripts/chaos.sh --minutes 60 for the long run).
  # First the checker's own test: with the fence off, a primary whose daemon is frozen past ttl
  # keeps taking writes while another node is promoted; the split-brain checker must see it.
  run chaos-selftest ./scripts/chaos.sh --no-setup --events 1 --seed 1 --faults freeze-daemon --target primary \
    --hold 16 --fence off --sync off --expect-split-brain
  run chaos-etcd ./scripts/chaos.sh --no-setup --minutes "${SPILO_CHAOS_MINUTES:-3}" --seed "${SPILO_CHAOS_SEED:-11}" --dcs etcd --sync on
  run chaos-zookeeper ./scripts/chaos.sh --no-setup --minutes "${SPILO_CHAOS_MINUTES:-3}" --seed "${SPILO_CHAOS_SEED:-12}" --dcs zookeeper --sync off
  # The AWS lab, short form: the template's stack on moto, three nodes as the group's
  # instances, a backup into the stack's bucket, a lifecycle termination, a replacement node
  # restored from the bucket (./scripts/aws-lab.sh --long for a bigger data set). ~1 minute.
  run aws-lab ./scripts/aws-lab.sh --no-setup
else
  skip unit-tests
  skip conformance-tests
  skip integration-tests
  skip integration-zookeeper
  skip integration-etcd-tls
  skip integration-plugin
  skip integration-plugin-abi10
  skip chaos-selftest
  skip chaos-etcd
  skip chaos-zookeeper
  skip aws-lab
fi

# Add up cargo's "test result:" lines.
passed=0; tfailed=0; ignored=0
for f in "$LOGDIR"/unit-tests.log "$LOGDIR"/conformance-tests.log "$LOGDIR"/integration-tests.log "$LOGDIR"/integration-zookeeper.log "$LOGDIR"/integration-etcd-tls.log "$LOGDIR"/integration-plugin.log "$LOGDIR"/integration-plugin-abi10.log; do
  [ -f "$f" ] || continue
  while read -r p fl ig; do
    passed=$((passed + p)); tfailed=$((tfailed + fl)); ignored=$((ignored + ig))
  done < <(sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed; \([0-9]*\) ignored.*/\1 \2 \3/p' "$f")
done

echo
line="steps:"
for s in "${STEPS[@]}"; do line+=" $s=${RESULT[$s]}"; done
echo "$line"
if [ "$failed" -eq 0 ]; then
  echo "test.sh: all steps passed ($passed tests passed, $ignored ignored)"
else
  echo "test.sh: FAILED"
fi
echo "tests: $passed passed, $tfailed failed"
exit "$failed"
