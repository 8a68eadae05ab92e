# syntax=docker/dockerfile:1
# One image for every warmer process: the command is the process (`checkout`, `refill`,
# `reconcile`, `web`, `autoscale`, or `dev` to try it on one machine); there is no default.
#   docker build --build-arg GIT_COMMIT=$(git rev-parse HEAD) -t warmer .
#   docker run --env-file .env warmer web

FROM rust:1-bookworm AS build
WORKDIR /src
ARG GIT_COMMIT=""
ENV GIT_COMMIT=${GIT_COMMIT} \
    CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=true
COPY . .
# The registry and the target directory are cached between builds: a source change rebuilds
# warmer, not its dependencies.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin warmer \
    && cp target/release/warmer /usr/local/bin/warmer

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home warmer
COPY --from=build /usr/local/bin/warmer /usr/local/bin/warmer
USER warmer
# `warmer web` and `warmer dev` serve HTTP on $PORT (default 8080). The health check asks their
# /health (Redis and RabbitMQ reachable); for the processes that serve no HTTP, disable it
# (`healthcheck: {disable: true}` in compose): their liveness is their queue's consumer count.
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
    CMD curl -fsS "http://127.0.0.1:${PORT:-8080}/health" > /dev/null || exit 1
ENTRYPOINT ["warmer"]
CMD ["--help"]
