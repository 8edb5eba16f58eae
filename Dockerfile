# The ml-pipeline worker image: `ml-pipeline worker` by default, any other subcommand by
# overriding the command (`docker run IMAGE migrate`, an ECS command override `["migrate"]`).
#
#   docker build --platform linux/amd64 --build-arg REVISION="$(git rev-parse HEAD)" -t ml-pipeline .
#
# Stages: chef (toolchain + cargo-chef) -> planner (recipe.json from the manifests) -> builder
# (dependencies cooked into their own cached layer, then the crate) -> runtime (the binary only).
# To pin the base images by digest as well, append `@sha256:...` to RUST_IMAGE and RUNTIME_BASE.
#
# The bases are build arguments so that this one file also builds where no registry can be
# reached (`make image`, localstack/image.sh): there RUNTIME_BASE is a bookworm-slim made from
# Debian's packages (debootstrap minbase, slimmed like the official image by debuerreotype) and
# imported as a local image, and the binary is the `dist` build made beside the image
# (BINARY_STAGE=prebuilt, the build context `dist-binary` holding `ml-pipeline`), because no Rust
# image can be pulled there. The runtime stage below is the same in both cases. Needs BuildKit
# (Docker's default builder) or podman/buildah: only the stages the runtime stage uses are built.
ARG RUST_IMAGE=rust:1.95.0-slim-bookworm
ARG RUNTIME_BASE=debian:bookworm-slim
# `builder`: compile the binary in this file (the default); `prebuilt`: take the one built beside.
ARG BINARY_STAGE=builder

FROM ${RUST_IMAGE} AS chef
# rust:*-slim ships gcc and libc6-dev, which is all the C this crate builds (zstd-sys, ring and
# aws-lc-sys through the cc crate; TLS is rustls, so no OpenSSL and no pkg-config).
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /app

FROM chef AS planner
# The context is only what the build needs (see .dockerignore): the manifests, src/,
# migrations/, the bench and test sources (declared targets must exist for cargo-chef), and the
# tools/ crate (a workspace member: cargo reads its manifest even when it is not built).
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /app/recipe.json recipe.json
# Dependencies only: this layer is rebuilt when Cargo.toml or Cargo.lock change, not when src/ does.
# The dist profile (Cargo.toml): the release profile with fat LTO and one codegen unit. It links
# several minutes longer and the worker spends about a tenth less CPU per record (BENCHMARKS.md).
RUN cargo chef cook --profile dist --recipe-path recipe.json
COPY . .
# migrations/ is embedded by sqlx::migrate!, src/banknote_spec.json by include_str!.
# The tools crate (ml-pipeline-tools) is not built into the image, only the worker's binary.
RUN cargo build --profile dist --locked -p ml-pipeline --bin ml-pipeline

# The `dist` binary built outside any image (`cargo build --profile dist --locked -p ml-pipeline
# --bin ml-pipeline`, then passed with `--build-context dist-binary=DIR`), at the path the
# builder stage leaves it. localstack/image.sh does this; a default build never uses this stage.
FROM scratch AS prebuilt
# dist-binary is a named build context, not a stage.
# hadolint ignore=DL3022
COPY --from=dist-binary ml-pipeline /app/target/dist/ml-pipeline

# The stage named by BINARY_STAGE: the runtime stage copies the binary from here.
FROM ${BINARY_STAGE} AS binary

# debian:bookworm-slim rather than distroless/cc: the same Debian release as the builder, so the
# glibc the binary was linked against is the one it runs on; ca-certificates comes from Debian
# with its security updates (the AWS SDK's rustls client reads the system roots); and the
# non-root user gets the numeric UID the ECS task definition names (10001).
FROM ${RUNTIME_BASE} AS runtime

# Unpinned on purpose: the release is pinned by the base tag, and the package should carry
# Debian's latest security update for it. No package lists, caches or apt logs stay in the layer.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
        /var/log/apt/* /var/log/dpkg.log \
    && groupadd --system --gid 10001 ml-pipeline \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin ml-pipeline \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/ml-pipeline

COPY --from=binary /app/target/dist/ml-pipeline /usr/local/bin/ml-pipeline

# After the package layer, so that a new commit (REVISION) reuses it from the build cache.
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ml-pipeline" \
      org.opencontainers.image.description="SQS ML pipeline worker: bundles in, standardized, enriched (PostgreSQL, MongoDB), normalized, SVM predictions out" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${REVISION}"

# The only writable place when the root filesystem is read-only (as in the ECS task): one-off
# commands such as `train` write their report into the working directory. ECS copies a VOLUME's
# ownership into the task's bind mount of the same path, so UID 10001 can write there.
WORKDIR /var/lib/ml-pipeline
VOLUME ["/var/lib/ml-pipeline"]

USER 10001:10001
ENV RUST_LOG=info

# /metrics, /health and /ready (ML_PIPELINE_HTTP_ADDR, default 0.0.0.0:9090).
EXPOSE 9090
# No curl in the image: the binary checks itself (GET /health on 127.0.0.1; --ready for /ready).
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/usr/local/bin/ml-pipeline", "healthcheck"]

# ECS sends SIGTERM, waits stopTimeout (30 s), then SIGKILL; the worker drains within 25 s.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ml-pipeline"]
CMD ["worker"]
