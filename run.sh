#!/usr/bin/env bash
# One entry for a fresh machine: installs what is missing, then runs the demo or the tests.
#   ./run.sh demo [--keep] [--slurm 24.11|26.05]  the demo: emulator + real local Slurm, jobs boot
#                                  and release servers (--slurm: Debian 13's / sid's Slurm from a root)
#   ./run.sh test [PYTEST ARGS]    the whole test suite (unit, integration, e2e); `--slurm 24.11`
#                                  runs the real-Slurm tests against Debian 13's Slurm
#   ./run.sh roots [trixie|sid]    build the Debian roots now (debootstrap; reused while complete)
#   ./run.sh setup [--roots]       only install what the others need
set -euo pipefail
cd "$(dirname "$0")"
VENV=${ELASTIC_VENV:-.venv}

need_debian_packages() {
  local missing=()
  for pkg in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  if ((${#missing[@]})); then
    if [ "$(id -u)" -ne 0 ]; then
      echo "run.sh: needs root to apt-get install ${missing[*]} (or install them first)" >&2
      exit 2
    fi
    echo "run.sh: installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # Debian's packages start daemons through init scripts where an init system runs; the lab
  # starts its own, on its own ports and key, so stop nothing and start nothing here.
}

need_debootstrap() {
  command -v debootstrap >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "run.sh: needs root to apt-get install debootstrap (or install it first)" >&2
    exit 2
  fi
  echo "run.sh: installing debootstrap" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# True when the arguments (--slurm X / --slurm=X) or $ELASTIC_SLURM ask for a Debian root's Slurm.
wants_root() {
  local want=${ELASTIC_SLURM:-host} prev=
  for arg in "$@"; do
    case "$arg" in --slurm=*) want=${arg#--slurm=} ;; esac
    [ "$prev" = --slurm ] && want=$arg
    prev=$arg
  done
  [ -n "$want" ] && [ "$want" != host ]
}

need_python() {
  local py=${PYTHON:-python3}
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
    echo "run.sh: needs Python >= 3.11 (openstacksdk >= 4.14 requires it); set PYTHON=" >&2; exit 2; }
  if [ ! -x "$VENV/bin/python" ]; then
    "$py" -m venv "$VENV"
  fi
  if ! "$VENV/bin/python" -c 'import elastic, openstack, openstackclient, pytest' 2>/dev/null \
     || [ setup.cfg -nt "$VENV/.installed" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    touch "$VENV/.installed"
  fi
}

cmd=${1:-}
shift || true
case "$cmd" in
  demo)
    need_debian_packages
    if wants_root "$@"; then need_debootstrap; fi
    need_python
    exec "$VENV/bin/elastic" demo "$@"
    ;;
  setup)
    need_debian_packages
    if [ "${1:-}" = --roots ]; then need_debootstrap; fi
    need_python
    ;;
  roots)
    need_debootstrap
    need_python
    exec "$VENV/bin/python" -m elastic.lab.slurm.roots build "$@"
    ;;
  test)
    need_debian_packages
    if wants_root "$@"; then need_debootstrap; fi
    need_python
    # The tests run the venv's console scripts (openstack, elastic) by name, as an admin would.
    PATH="$(cd "$VENV/bin" && pwd):$PATH" exec "$VENV/bin/python" -m pytest "$@"
    ;;
  *)
    echo "usage: ./run.sh demo [--keep] [--slurm X] | ./run.sh test [pytest args] | ./run.sh roots [suite...]" \
         "| ./run.sh setup [--roots]" >&2
    exit 2
    ;;
esac
