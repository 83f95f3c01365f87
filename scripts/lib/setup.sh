# Sourced by scripts/aws-lab.sh and scripts/chaos.sh (after they cd to the workspace): what
# both need before they run real processes.

# need_root SCRIPT WHY: exits 2 unless running as root.
need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    echo "$1: run it as root ($2)" >&2
    exit 2
  fi
}

# setup_or_check SETUP: with 1, installs what is missing (Debian packages, tools, the
# extension); with 0 installs nothing but stops, naming the missing tool, when one does not
# work (scripts/test.sh has installed everything already).
setup_or_check() {
  if [ "$1" -eq 1 ]; then
    ./scripts/install-deps.sh
    ./scripts/install-pgext.sh
  else
    ./scripts/install-deps.sh --check
  fi
}
