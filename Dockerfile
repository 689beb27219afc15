# syntax=docker/dockerfile:1
# One image for the whole crew: atlas, forge, sentinel, conductor and the crew CLI.
# compose.yaml picks the agent with `command:`; `docker compose build` builds it once.

FROM rust:1.89-bookworm AS build
# The release build is profile-guided: it trains on a crew at work, which needs a nats-server
# (the static binary of the image compose.yaml runs the bus with).
COPY --from=nats:2.10-alpine /usr/local/bin/nats-server /usr/local/bin/nats-server
WORKDIR /src
# The whole workspace: the protocol crate compiles schemas/ into the binaries.
COPY . .
# Cache mounts keep the registry and target/ between builds, so a source change does not
# rebuild every dependency; the binaries are copied out because the cache is not in the layer.
# The playbooks folder is also a crate: ship its playbooks and policies, not its source.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    bash scripts/release-build.sh \
 && mkdir -p /out/bin /out/playbooks /out/config \
 && cp target/release/atlas target/release/forge target/release/sentinel \
       target/release/conductor target/release/crew /out/bin/ \
 && cp playbooks/*.toml /out/playbooks/ && rm /out/playbooks/Cargo.toml \
 && if [ -d playbooks/services ]; then cp -r playbooks/services /out/playbooks/; fi \
 && cp -r playbooks/policies /out/playbooks/ \
 && cp config/*.toml /out/config/

FROM debian:bookworm-slim
# ca-certificates for TLS to Slack, curl for the compose healthchecks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/bin/ /usr/local/bin/
COPY --from=build /out/playbooks/ /opt/infracrew/playbooks/
COPY --from=build /out/config/ /opt/infracrew/config/
# The agents' default paths (playbooks, config/demo.toml) are relative to this folder.
WORKDIR /opt/infracrew
# Nothing here needs root; Forge's container driver gets the engine socket's group instead
# (see compose.yaml).
RUN groupadd --system --gid 10001 infracrew \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /opt/infracrew infracrew
USER 10001:10001
# Health, metrics and (Conductor) Slack endpoints; compose sets INFRACREW_LISTEN=0.0.0.0:8780.
EXPOSE 8780
CMD ["crew", "--help"]
