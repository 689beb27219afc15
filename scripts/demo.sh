#!/usr/bin/env bash
# make demo: a local crew on this machine deploys a sample domain agent to the local container
# engine. `crew up` starts nats-server with JetStream on a free port (unless NATS_URL names one)
# and the four agents; the sample goal then goes through planning, policy, approval and a
# rolling apply with health checks, and the service answers on its published port.
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

step "the container engine"
DOCKER_HOST=$(bash "$root/scripts/engine.sh")
export DOCKER_HOST
echo "DOCKER_HOST=$DOCKER_HOST"
image=infracrew/social-intel:1.4.0
service_port=9000
"$bin/sample-image" "$image" --port "$service_port"

# A demo run before this one left the service deployed: start from nothing, so the plan
# creates it again.
if [[ $DOCKER_HOST == unix://* ]]; then
  sock=${DOCKER_HOST#unix://}
  api() { curl -fsS --unix-socket "$sock" -H 'Content-Type: application/json' "$@"; }
  for id in $(api 'http://engine/containers/json?all=1&filters=%7B%22label%22%3A%5B%22infracrew.environment%3Dstaging%22%2C%22infracrew.service%3Dsocial-intel%22%5D%7D' | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4); do
    api -X DELETE "http://engine/containers/$id?force=1" >/dev/null
  done
fi

step "crew up --driver container (nats-server with JetStream and the four agents; their logs: $work/crew.log)"
export INFRACREW_PLAYBOOKS="$root/playbooks"
export INFRACREW_HEARTBEAT_INTERVAL=${INFRACREW_HEARTBEAT_INTERVAL:-1s}
"$bin/crew" up --driver container --config "$root/config/demo.toml" >"$work/crew.log" 2>&1 &
pids+=($!)
for _ in $(seq 150); do
  url=$(sed -n 's/.*NATS_URL=\([^;]*\);.*/\1/p' "$work/crew.log" | head -n1)
  [ -n "$url" ] && break
  sleep 0.2
done
[ -n "${url:-}" ] || { echo "crew up did not start; its log:"; cat "$work/crew.log"; exit 1; }
export NATS_URL="$url"
# The crew's server has a user per agent; the CLI has its own, with its own password.
NATS_USER=$(sed -n 's/.* NATS_USER=\([^;]*\);.*/\1/p' "$work/crew.log" | head -n1)
NATS_PASSWORD=$(sed -n 's/.* NATS_PASSWORD=\([^;]*\);.*/\1/p' "$work/crew.log" | head -n1)
export NATS_USER NATS_PASSWORD
echo "NATS_URL=$NATS_URL NATS_USER=$NATS_USER"

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

step "crew approve $plan --as alice (Forge rolls out 2 replicas of $image and checks their health)"
"$bin/crew" approve "$plan" --as alice
wait_for APPLIED

step "crew show $plan"
"$bin/crew" show "$plan"

step "the service answers"
url="http://127.0.0.1:$service_port"
echo "GET $url/ -> $(curl -fsS "$url/")"
echo "GET $url/health/ready -> $(curl -fsS "$url/health/ready")"

crew_seconds=$("$bin/crew" show --json "$plan" | python3 -c '
import json, sys
from datetime import datetime
history = json.load(sys.stdin)["history"]
at = {entry["to"]: datetime.fromisoformat(entry["at"].replace("Z", "+00:00")) for entry in history}
print("%.2f" % (at["APPLIED"] - at["APPLYING"]).total_seconds())')
if [ -n "${sock:-}" ]; then
  # The engine's own time for the same work: create, start and health-check 2 containers of the
  # same image, straight through the Engine API.
  start=$(date +%s.%N)
  for n in 1 2; do
    port=$((19100 + n))
    id=$(api -X POST "http://engine/containers/create?name=infracrew-demo-baseline-$n" \
      -d "{\"Image\":\"$image\",\"ExposedPorts\":{\"$service_port/tcp\":{}},\"HostConfig\":{\"PortBindings\":{\"$service_port/tcp\":[{\"HostPort\":\"$port\"}]}}}" \
      | grep -o '"Id":"[0-9a-f]*"' | cut -d'"' -f4)
    api -X POST "http://engine/containers/$id/start" >/dev/null
    until curl -fs --max-time 1 "http://127.0.0.1:$port/health/ready" >/dev/null; do sleep 0.05; done
  done
  engine_seconds=$(python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$(date +%s.%N)")
  for n in 1 2; do api -X DELETE "http://engine/containers/infracrew-demo-baseline-$n?force=1" >/dev/null; done
  printf 'rollout of 2 replicas through the crew (APPLYING to APPLIED): %ss; the engine alone, started and health-checked directly: %.2fs\n' "$crew_seconds" "$engine_seconds"
fi

step "crew submit examples/goals/invalid/unknown-field.json (refused before anything is sent)"
if "$bin/crew" submit "$root/examples/goals/invalid/unknown-field.json"; then
  echo "the invalid goal was accepted: that is a bug"; exit 1
fi

cat <<NOTE

The crew took the goal from plan to policy check to approval to a rolling deploy on the local
engine ($DOCKER_HOST). social-intel answers at $url and keeps running after the crew
stops; remove it with a decommission goal, or by hand:
  curl -X DELETE --unix-socket ${sock:-<socket>} 'http://engine/containers/<id>?force=1'
NOTE
