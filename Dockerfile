# rekindle worker image: `docker build -t rekindle .` then see helm/rekindle.
# Build stage: the toolchain, bindgen's libclang and the C++ of RocksDB and librdkafka.
FROM rust:1-bookworm AS build
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libclang-dev libssl-dev pkg-config \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p rekindle \
 && cp target/release/rekindle /usr/local/bin/rekindle

# Runtime stage: the binary and the C++ runtime it links, nothing else; no shell tools
# beyond what the base ships. The configuration comes from a mounted file and
# REKINDLE__SECTION__KEY variables; state lives on the mounted volume.
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libssl3 libstdc++6 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 rekindle \
 && useradd --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin rekindle \
 && mkdir -p /var/lib/rekindle /etc/rekindle \
 && chown rekindle:rekindle /var/lib/rekindle
COPY --from=build /usr/local/bin/rekindle /usr/local/bin/rekindle
USER 10001:10001
ENV REKINDLE__STATE__DIR=/var/lib/rekindle/state \
    REKINDLE__HTTP__LISTEN=0.0.0.0:9898 \
    REKINDLE__LOG__FORMAT=json
EXPOSE 9898
VOLUME ["/var/lib/rekindle"]
ENTRYPOINT ["/usr/local/bin/rekindle"]
CMD ["--config", "/etc/rekindle/rekindle.toml", "run"]
