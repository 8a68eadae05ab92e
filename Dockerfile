FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin warmer

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libssl3 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/warmer /usr/local/bin/warmer
# `warmer web` and `warmer dev` serve HTTP on $PORT (default 8080).
EXPOSE 8080
ENTRYPOINT ["warmer"]
CMD ["dev"]
