#!/usr/bin/env bash
# Installs the Debian packages ziplora needs, when any is missing.
set -euo pipefail
# clang + libclang-rt-dev (libFuzzer and the sanitizer runtimes: only "Recommended" by clang, so
# absent where apt skips recommends) + libomp-dev build the fuzz harnesses (scripts/fuzz.sh).
pkgs=(build-essential cmake pkg-config clang libclang-rt-dev libomp-dev libopenblas-openmp-dev libjansson-dev
      libspng-dev libstb-dev zlib1g-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
