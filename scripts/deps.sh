#!/usr/bin/env bash
# Installs the Debian packages the project needs to build, test and run (as root).
# Skips apt-get entirely when everything is already installed, so reruns are fast.
set -euo pipefail
pkgs=(cmake g++ make pkg-config libuv1-dev libhiredis-dev libyaml-cpp-dev libspdlog-dev
      libfmt-dev doctest-dev libssl-dev redis-server redis-tools "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
