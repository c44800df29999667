# syntax=docker/dockerfile:1
# The operator image (ghcr.io/potluck-dev/potluck-operator). Build from the
# repository root, which is the build context:
#   docker build -f docker/operator.Dockerfile -t ghcr.io/potluck-dev/potluck-operator:0.1.0 .
# See docker/README.md.

# --- build --------------------------------------------------------------------
FROM rust:1.89-bookworm AS builder
# libclang + clang: bindgen for crates in the workspace; protoc: the gRPC API
# in proto/ (the operator pushes cluster maps to agents over it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libclang-dev protobuf-compiler clang \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p potluck-operator --bin potluck-operator \
 && cp target/release/potluck-operator /usr/local/bin/potluck-operator

# --- run ----------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: TLS to the Kubernetes API server.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
# Non-root, uid/gid 65532 as in deploy/20-operator.yaml.
RUN groupadd --system --gid 65532 potluck \
 && useradd --system --uid 65532 --gid potluck --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin potluck
COPY --from=builder /usr/local/bin/potluck-operator /usr/local/bin/potluck-operator
# Fails the build if a shared library is missing from the runtime image.
RUN ["/usr/local/bin/potluck-operator", "--version"]
USER 65532:65532
# 9200: /metrics, /healthz, /readyz.
EXPOSE 9200
ENTRYPOINT ["/usr/local/bin/potluck-operator"]
