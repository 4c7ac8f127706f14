# syntax=docker/dockerfile:1
#
# pgdyno in a small image: built with cargo, shipped as the binary alone on
# debian:bookworm-slim (plus CA certificates for TLS to PostgreSQL), running
# as an unprivileged user.
#
#   docker build -t pgdyno .
#   docker run --rm -p 6432:6432 -e DATABASE_URL=postgres://user:pass@host:5432/db pgdyno
#
# The image sets PGDYNO_LISTEN=0.0.0.0:6432 (a container is reached from
# outside it); any flag or PGDYNO_* variable still overrides it. For
# `pgdyno run -- APP` inside a container, start it with `docker run --init`
# so that something reaps the app's orphaned grandchildren.

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
# The caches keep the registry and compiled dependencies between builds;
# the binary is copied out of the cached target directory before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pgdyno \
    && cp target/release/pgdyno /usr/local/bin/pgdyno \
    && strip --strip-debug /usr/local/bin/pgdyno

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 pgdyno \
    && useradd --system --uid 10001 --gid pgdyno --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin pgdyno
COPY --from=build /usr/local/bin/pgdyno /usr/local/bin/pgdyno
USER 10001:10001
ENV PGDYNO_LISTEN=0.0.0.0:6432
EXPOSE 6432 9187
ENTRYPOINT ["pgdyno"]
