# FinalPrice images: one build stage for both binaries, then a small non-root runtime per service.
#   docker build --target front  -t finalprice-front .
#   docker build --target worker -t finalprice-worker .

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and the dependency builds between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin finalprice-front --bin finalprice-worker \
 && mkdir -p /out && cp target/release/finalprice-front target/release/finalprice-worker /out/

FROM debian:bookworm-slim AS runtime
RUN useradd --system --uid 10001 --no-create-home finalprice
USER finalprice
ENV RUST_LOG=info FINALPRICE_LOG__FORMAT=json

FROM runtime AS front
COPY --from=build /out/finalprice-front /usr/local/bin/finalprice-front
ENV FINALPRICE_HTTP__ADDR=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["finalprice-front"]

FROM runtime AS worker
COPY --from=build /out/finalprice-worker /usr/local/bin/finalprice-worker
ENTRYPOINT ["finalprice-worker"]
