# retake: one image for `retake worker` and `retake api`.
# Build stage: the whole workspace, release profile (protobufs are vendored: no protoc needed).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p retake \
 && strip target/release/retake

# Runtime stage: a small Debian with CA certificates (Temporal Cloud uses TLS), no toolchain.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home /var/lib/retake retake \
 && mkdir -p /var/lib/retake && chown retake /var/lib/retake
COPY --from=build /src/target/release/retake /usr/local/bin/retake
USER retake
WORKDIR /var/lib/retake
ENV RUST_LOG=warn,retake=info
ENTRYPOINT ["retake"]
CMD ["worker"]
