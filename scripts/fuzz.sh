#!/usr/bin/env bash
# Fuzzing with libFuzzer under ASan+UBSan.
#   scripts/fuzz.sh smoke        replay the corpus + 20 s of new inputs per harness
#   scripts/fuzz.sh run SECONDS  fuzz each harness for SECONDS, growing the corpus
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-smoke}
secs=${2:-20}
CC=clang cmake -S . -B build-fuzz -DZL_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz -j"$(nproc)" >/dev/null
[ "$mode" = smoke ] && secs=20
for src in fuzz/fuzz_*.c; do
  name=$(basename "$src" .c)
  corpus=fuzz/corpus/${name#fuzz_}
  mkdir -p "$corpus"
  work=$(mktemp -d)
  echo "fuzz: $name for ${secs}s (corpus $corpus)"
  # new inputs go to a scratch folder; the repo corpus is only read in smoke mode
  if [ "$mode" = smoke ]; then
    ASAN_OPTIONS=detect_leaks=1 ./build-fuzz/"$name" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$work/" "$work" "$corpus" 2>&1 | tail -3
  else
    ASAN_OPTIONS=detect_leaks=1 ./build-fuzz/"$name" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix=fuzz/ "$corpus" 2>&1 | tail -3
  fi
  rm -rf "$work"
done
