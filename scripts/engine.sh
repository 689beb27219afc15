#!/usr/bin/env bash
# Prints the address of a container engine for the demo, starting one when none answers:
# DOCKER_HOST when set, Docker's socket when it answers, else Podman's Docker-compatible service
# on .tools/podman/podman.sock with this repository's settings (config/podman/). The service
# keeps running after the demo, like a Docker daemon, so what the demo deployed stays reachable.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
say() { printf 'engine: %s\n' "$*" >&2; }

answers() { curl -fsS --max-time 2 --unix-socket "$1" http://engine/_ping >/dev/null 2>&1; }

if [ -n "${DOCKER_HOST:-}" ]; then
  echo "$DOCKER_HOST"; exit 0
fi
if [ -S /var/run/docker.sock ] && answers /var/run/docker.sock; then
  echo "unix:///var/run/docker.sock"; exit 0
fi
command -v podman >/dev/null 2>&1 || { say "no Docker engine answers and Podman is not installed: run make deps"; exit 1; }

socket="$root/.tools/podman/podman.sock"
if ! answers "$socket"; then
  mkdir -p "$(dirname "$socket")"
  rm -f "$socket"
  say "starting Podman's Docker-compatible service on $socket (log: $root/.tools/podman/service.log)"
  CONTAINERS_CONF="$root/config/podman/containers.conf" \
  CONTAINERS_STORAGE_CONF="$root/config/podman/storage.conf" \
    nohup podman system service --time=0 "unix://$socket" >"$root/.tools/podman/service.log" 2>&1 &
  for _ in $(seq 100); do answers "$socket" && break; sleep 0.1; done
  answers "$socket" || { say "Podman's service did not answer; its log:"; cat "$root/.tools/podman/service.log" >&2; exit 1; }
fi
echo "unix://$socket"
