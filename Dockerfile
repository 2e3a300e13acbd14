# kompress-proxy container image: a Debian bookworm build stage (Release build with cmake) and
# a slim runtime stage holding only the binary and the shared libraries it links.
#
#   docker build -t kompress-proxy .
#   docker run --rm -p 6380:6380 -e REDIS_HOST=redis -e REDIS_PORT=6379 kompress-proxy

FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config ca-certificates \
      libuv1-dev libhiredis-dev libyaml-cpp-dev libspdlog-dev libfmt-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Start from a clean build tree even if the context carried one.
RUN rm -rf build \
 && cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DKP_TESTS=OFF \
 && cmake --build build -j"$(nproc)" --target kompress-proxy \
 && strip build/kompress-proxy

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libuv1 libhiredis0.14 libyaml-cpp0.7 libspdlog1.10 libfmt9 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 kompress \
 && useradd --system --uid 10001 --gid kompress --no-create-home \
      --shell /usr/sbin/nologin kompress
COPY --from=build /src/build/kompress-proxy /usr/local/bin/kompress-proxy
USER 10001:10001
EXPOSE 6380
# Settings come from REDIS_* / KOMPRESS_* variables or a mounted --config file; flags given
# to `docker run IMAGE ...` are appended (CLI wins over env and file).
ENTRYPOINT ["/usr/local/bin/kompress-proxy", "--listen", "0.0.0.0:6380"]
