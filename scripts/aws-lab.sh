#!/usr/bin/env bash
# The AWS lab on this machine: the CloudFormation stack from `spiloctl aws template` created on
# moto, three spilo nodes as the Auto Scaling Group's instances (each with its own IMDSv2 stub),
# the primary in the stack's ELB and the record on the ELB, a base backup into the stack's
# bucket, the primary's instance terminated through the lifecycle hook (hand-over, no write
# refused by a member the ELB still lists, the lifecycle action completed), and a replacement
# node with an empty disk restored from the bucket. Prints the figures (lines "lab: …").
#
#   ./scripts/aws-lab.sh [--rows N] [--long] [--no-setup]
#
#   --rows N    rows of 200 bytes in the cluster before the backup (default 20000: the short
#               form CI runs); --long is --rows 2000000 (about 500 MB of table).
#   --no-setup  install nothing (scripts/test.sh has done it); only check the tools work.
#
# moto lacks an instance-metadata lifecycle state and CompleteLifecycleAction: the test
# harness's stubs stand in (tests/harness/imds.rs, tests/harness/autoscaling.rs). What only
# real AWS can show is listed in the README ("On AWS").
set -euo pipefail

cd "$(dirname "$0")/.."
if [ -d "$HOME/.cargo/bin" ]; then PATH="$HOME/.cargo/bin:$PATH"; fi

setup=1
rows=20000
while [ $# -gt 0 ]; do
  case "$1" in
    --no-setup) setup=0 ;;
    --long) rows=2000000 ;;
    --rows)
      shift
      case "${1:-}" in
        '' | *[!0-9]*) echo "aws-lab.sh: --rows takes a whole number" >&2; exit 2 ;;
      esac
      rows=$1
      ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "aws-lab.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=scripts/lib/setup.sh
. scripts/lib/setup.sh
need_root aws-lab.sh "the nodes run as the postgres user, started with setpriv"
setup_or_check "$setup"
cargo build --workspace

log=$(mktemp /tmp/spilo-aws-lab-XXXXXX.log)
echo "aws-lab.sh: running the lab ($rows rows); full output in $log"
status=0
SPILO_LAB_ROWS="$rows" cargo test -p spilo-tests --test integration aws_lab -- \
  --ignored --nocapture --test-threads=1 >"$log" 2>&1 || status=$?
echo
echo "===== the AWS lab ====="
grep -o 'lab: .*' "$log" || true
grep -E '^test result:' "$log" || true
if [ "$status" -eq 0 ] && ! grep -q '^test result: ok. 1 passed' "$log"; then
  echo "aws-lab.sh: the lab test did not run (renamed?)"
  status=1
fi
if [ "$status" -ne 0 ]; then
  echo
  echo "aws-lab.sh: the lab FAILED; the end of its output:"
  tail -n 60 "$log"
  exit "$status"
fi
echo "aws-lab.sh: passed"
