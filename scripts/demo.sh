#!/usr/bin/env bash
# make demo: a local crew on this machine. `crew up` starts nats-server with JetStream on a free
# port (unless NATS_URL names one) and the four agents; a sample goal then goes through
# planning, policy, approval and apply.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin="$root/target/debug"
work=$(mktemp -d -t infracrew-demo-XXXXXX)
pids=()

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

stop() {
  step "stopping the crew"
  for pid in "${pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  tail -n 3 "$work/crew.log" 2>/dev/null || true
  echo "the crew's logs are kept in $work/crew.log"
}
trap stop EXIT

step "crew up --driver dry-run (nats-server with JetStream and the four agents; their logs: $work/crew.log)"
export INFRACREW_PLAYBOOKS="$root/playbooks"
export INFRACREW_HEARTBEAT_INTERVAL=${INFRACREW_HEARTBEAT_INTERVAL:-1s}
"$bin/crew" up --driver dry-run --config "$root/config/demo.toml" >"$work/crew.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do
  url=$(sed -n 's/.*NATS_URL=\([^;]*\);.*/\1/p' "$work/crew.log" | head -n1)
  [ -n "$url" ] && break
  sleep 0.2
done
[ -n "${url:-}" ] || { echo "crew up did not start; its log:"; cat "$work/crew.log"; exit 1; }
export NATS_URL="$url"
echo "NATS_URL=$NATS_URL"

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
