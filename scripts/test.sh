#!/usr/bin/env bash
# Builds and runs the whole test suite on a fresh Debian bookworm machine (as root):
# installs what it needs, then unit + integration tests on a release build, the same suite
# on an ASan/UBSan build, and a short libFuzzer run of the RESP parsers.
set -euo pipefail
cd "$(dirname "$0")/.."
# (php-cli, php-redis, ruby-redis: the PHP and Ruby clients of
# tests/integration/test_php_ruby_clients.py.)
./scripts/deps.sh python3 python3-redis python3-pytest python3-pytest-xdist iproute2 nutcracker redis-sentinel prometheus openssl clang-14 libclang-rt-14-dev php-cli php-redis ruby-redis
# Real Node.js clients for tests/integration/test_clients.py (node-redis with RESP3, ioredis)
# at the versions its package-lock.json pins.
command -v npm >/dev/null 2>&1 || ./scripts/deps.sh nodejs npm
(cd tests/integration/node && npm ci --no-audit --no-fund)
jobs=$(nproc)
# Each stage says when it starts (seconds since the script began): where CI time goes.
stage() { echo "== $1 (at ${SECONDS}s)"; }

stage "release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure)

stage "ASan/UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKP_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
   UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure)

stage "fuzz smoke (libFuzzer)"
CC=clang-14 CXX=clang++-14 cmake -S . -B build-fuzz -DKP_FUZZ=ON -DKP_TESTS=OFF >/dev/null
cmake --build build-fuzz -j"$jobs" --target request_parser_fuzz reply_framer_fuzz
for t in request_parser_fuzz reply_framer_fuzz; do
  ./build-fuzz/fuzz/$t -max_total_time=12 -dict=fuzz/resp.dict -print_final_stats=0 2>&1 | tail -1
done
echo "all test stages passed (${SECONDS}s)"
