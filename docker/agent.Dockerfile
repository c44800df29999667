# syntax=docker/dockerfile:1
# The node agent image (ghcr.io/potluck-dev/potluck-agent). Build from the
# repository root, which is the build context:
#   docker build -f docker/agent.Dockerfile -t ghcr.io/potluck-dev/potluck-agent:0.1.0 .
# See docker/README.md.

# --- build --------------------------------------------------------------------
FROM rust:1.89-bookworm AS builder
# libclang + clang: bindgen for RocksDB's C API; protoc: the gRPC API in proto/.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev protobuf-compiler clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep the registry and compiled dependencies (RocksDB's C++
# takes most of a cold build) between image builds; the binary is copied out
# of the cached target directory within the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p potluck-agent \
 && cp target/release/potluck-agent /usr/local/bin/potluck-agent

# --- run ----------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to the Kubernetes API server. libstdc++6 (RocksDB is C++)
# is already in the base image; listed so that stays true.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libstdc++6 \
 && rm -rf /var/lib/apt/lists/*
# uid/gid 65532, the same numbers deploy/30-agent.yaml runs the agent as (its
# init container chowns the hostPath data directory to them).
RUN groupadd --system --gid 65532 potluck \
 && useradd --system --uid 65532 --gid potluck --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin potluck
COPY --from=builder /usr/local/bin/potluck-agent /usr/local/bin/potluck-agent
# Fails the build if a shared library is missing from the runtime image.
RUN ["/usr/local/bin/potluck-agent", "--version"]
USER 65532:65532
# 7100 gRPC (objects, shards, control, health), 9100 Prometheus /metrics.
EXPOSE 7100 9100
ENTRYPOINT ["/usr/local/bin/potluck-agent"]
