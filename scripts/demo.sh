#!/usr/bin/env bash
# make demo: a local crew on this machine. Starts nats-server with JetStream on a free port
# (unless NATS_URL names one), starts the four agents, and takes a sample goal onto the bus.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/debug"
work=$(mktemp -d -t infracrew-demo-XXXXXX)
pids=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop() {
  step "stopping the crew"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap stop EXIT

if [ -z "${NATS_URL:-}" ]; then
  step "starting nats-server with JetStream (store in $work)"
  mkdir -p "$work/ports"
  "${NATS_SERVER_BIN:-nats-server}" -js -a 127.0.0.1 -p -1 -sd "$work/store" \
    --ports_file_dir "$work/ports" >"$work/nats.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    port=$(grep -ho '127.0.0.1:[0-9]*' "$work"/ports/*.ports 2>/dev/null | head -n1 | cut -d: -f2 || true)
    [ -n "$port" ] && break
    sleep 0.1
  done
  [ -n "${port:-}" ] || { echo "nats-server did not start; its log:"; cat "$work/nats.log"; exit 1; }
  export NATS_URL="nats://127.0.0.1:$port"
fi
echo "NATS_URL=$NATS_URL"

step "starting the crew: atlas, forge, sentinel, conductor"
export INFRACREW_HEARTBEAT_INTERVAL=${INFRACREW_HEARTBEAT_INTERVAL:-2s}
for agent in atlas forge sentinel conductor; do
  "$bin/$agent" > >(sed -u "s/^/$(printf '%-9s' "$agent")| /") 2>&1 &
  pids+=($!)
done

step "crew status --wait 30s (every agent connected and sending heartbeats)"
"$bin/crew" status --wait 30s

step "crew submit examples/goals/valid/social-intel-staging.json"
"$bin/crew" submit "$root/examples/goals/valid/social-intel-staging.json"

step "crew submit examples/goals/invalid/unknown-field.json (refused before anything is sent)"
if "$bin/crew" submit "$root/examples/goals/invalid/unknown-field.json"; then
  echo "the invalid goal was accepted: that is a bug"; exit 1
fi

step "crew status (the goal waits on Atlas's consumer)"
"$bin/crew" status

cat <<'NOTE'

This build connects the crew, provisions its streams, consumers and buckets, and takes
goals onto the bus. The agents do not plan, check or deploy yet: the goal above stays
queued for Atlas until a build that plans it.
NOTE
