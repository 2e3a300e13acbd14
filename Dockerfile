# kompress-proxy container image: a Debian bookworm build stage (Release build with cmake) and
# a slim runtime stage holding only the binary and the shared libraries it links.
#
#   docker build -t kompress-proxy .
#   docker run --rm -p 6380:6380 -e REDIS_HOST=redis -e REDIS_PORT=6379 kompress-proxy

FROM debian:bookworm AS build
WORKDIR /src
COPY . .
# The same install script and CMake configuration as CI (scripts/test.sh); only the binary is
# built here. Start from a clean build tree even if the context carried one.
RUN ./scripts/deps.sh \
 && rm -rf build \
 && cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo \
 && cmake --build build -j"$(nproc)" --target kompress-proxy \
 && strip build/kompress-proxy

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libuv1 libhiredis0.14 libyaml-cpp0.7 libspdlog1.10 libfmt9 libssl3 ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kompress \
 && useradd --system --uid 10001 --gid kompress --no-create-home \
      --shell /usr/sbin/nologin kompress
COPY --from=build /src/build/kompress-proxy /usr/local/bin/kompress-proxy
USER 10001:10001
# The admin endpoint (/metrics, /healthz, /readyz) is on inside the image: the health check
# below and the orchestrator's probes use it. KOMPRESS_ADMIN_LISTEN= (empty) turns it off.
ENV KOMPRESS_ADMIN_LISTEN=0.0.0.0:9180
EXPOSE 6380 9180
# The binary checks itself (no curl in the image): exit 0 when /healthz answers 200.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/kompress-proxy", "--healthcheck", "127.0.0.1:9180/healthz"]
# Settings come from REDIS_* / KOMPRESS_* variables or a mounted --config file; flags given
# to `docker run IMAGE ...` are appended (CLI wins over env and file).
ENTRYPOINT ["/usr/local/bin/kompress-proxy", "--listen", "0.0.0.0:6380"]
