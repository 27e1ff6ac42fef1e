#!/usr/bin/env bash
# Fuzzing with libFuzzer under ASan+UBSan (clang; scripts/deps.sh installs it).
#   scripts/fuzz.sh smoke [NAME...]        replay the repo corpus + 20 s of new inputs per harness (CI)
#   scripts/fuzz.sh run SECONDS [NAME...]  fuzz each harness for SECONDS, one at a time, then merge
#                                          what is new into fuzz/corpus/NAME (minimised, -merge=1)
#   scripts/fuzz.sh seed [NAME...]         merge fresh seeds from the fixtures (fuzz/make_seeds.py)
#   scripts/fuzz.sh merge [NAME...]        re-minimise fuzz/corpus/NAME
# NAME is a harness without the fuzz_ prefix (safetensors, unet_config, lora, image); default all.
# Findings (crash-*, leak-*, timeout-*) land in fuzz/ (git-ignored); every run appends one line to
# build-fuzz/runs.log for bench/RESULTS.md. Exits non-zero if any harness found something.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-smoke}
[ $# -gt 0 ] && shift
secs=20
if [ "$mode" = run ]; then
  secs=${1:?usage: scripts/fuzz.sh run SECONDS [NAME...]}
  shift
fi
build=build-fuzz

names=()
if [ $# -gt 0 ]; then
  for n in "$@"; do names+=("${n#fuzz_}"); done
else
  for src in fuzz/fuzz_*.c; do n=$(basename "$src" .c); names+=("${n#fuzz_}"); done
fi
targets=()
for n in "${names[@]}"; do
  [ -f "fuzz/fuzz_$n.c" ] || { echo "fuzz: no harness fuzz/fuzz_$n.c" >&2; exit 2; }
  targets+=("fuzz_$n")
done

# Only the harnesses (and the instrumented library) are built here: the tests
# need not compile with clang.
# -O1: libFuzzer needs speed more than step-through debugging (-g stays for stacks).
# -Wno-pass-failed: at -O1 clang does not vectorize, and warns (an error under -Werror)
# about every "#pragma omp simd" loop it leaves scalar.
CC=clang cmake -S . -B "$build" -DZL_FUZZ=ON -DCMAKE_BUILD_TYPE=Debug -DCMAKE_C_FLAGS_DEBUG="-g -O1 -Wno-pass-failed" >/dev/null
cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" >/dev/null

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
# Per input: 10 s is a hang; 2 GB is runaway memory.
common=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -print_final_stats=1)

size_of() { du -sb "$1" | cut -f1; }
count_of() { find "$1" -type f | wc -l; }

status=0
for n in "${names[@]}"; do
  bin=./$build/fuzz_$n
  corpus=fuzz/corpus/$n
  mkdir -p "$corpus"
  dict=()
  [ -f "fuzz/fuzz_$n.dict" ] && dict=(-dict="fuzz/fuzz_$n.dict")
  work=$(mktemp -d)
  log=$work/log
  rc=0
  case "$mode" in
  smoke)
    echo "fuzz: $n: replay $(count_of "$corpus") corpus inputs + ${secs}s"
    # New inputs go to a scratch folder; the repo corpus is only read.
    "$bin" "${common[@]}" "${dict[@]}" -max_total_time="$secs" -artifact_prefix="$work/" "$work" "$corpus" >"$log" 2>&1 || rc=$?
    ;;
  run)
    echo "fuzz: $n: ${secs}s from $(count_of "$corpus") corpus inputs"
    start=$(date -u +%Y-%m-%dT%H:%MZ)
    mkdir -p "$work/new"
    "$bin" "${common[@]}" "${dict[@]}" -max_total_time="$secs" -artifact_prefix=fuzz/ "$work/new" "$corpus" >"$log" 2>&1 || rc=$?
    ;;
  seed)
    mkdir -p "$build/seeds"
    ZL_SEEDS_DIR="$build/seeds" python3 fuzz/make_seeds.py "$n"
    "$bin" "${common[@]}" -merge=1 "$corpus" "$build/seeds/$n" >"$log" 2>&1 || rc=$?
    ;;
  merge)
    mkdir -p "$work/min"
    "$bin" "${common[@]}" -merge=1 "$work/min" "$corpus" >"$log" 2>&1 || rc=$?
    if [ $rc -eq 0 ]; then rm -rf "$corpus" && mv "$work/min" "$corpus"; fi
    ;;
  *) echo "usage: scripts/fuzz.sh smoke|run SECONDS|seed|merge [NAME...]" >&2; exit 2 ;;
  esac
  if [ $rc -ne 0 ]; then
    status=1
    echo "fuzz: $n FAILED (exit $rc); log tail:" >&2
    tail -n 60 "$log" >&2
    [ "$mode" = smoke ] && cp "$work"/crash-* "$work"/leak-* "$work"/timeout-* "$work"/oom-* fuzz/ 2>/dev/null || true
  else
    grep -E '^(#[0-9]+ +DONE|Done [0-9]+ runs|MERGE-OUTER: [0-9]+ new files)' "$log" | tail -2 || true
  fi
  if [ "$mode" = run ]; then
    # Keep only the new inputs that add coverage, so the repo corpus stays small.
    if [ $rc -eq 0 ]; then
      "$bin" "${common[@]}" -merge=1 "$corpus" "$work/new" >"$work/merge.log" 2>&1 || echo "fuzz: $n: merge failed" >&2
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    result=$([ $rc -eq 0 ] && echo "no crash, leak or hang" || echo "FAILED (exit $rc), see fuzz/crash-*|leak-*|timeout-*")
    line="| $start | fuzz_$n | ${secs} s | ${execs:-?} | $(count_of "$corpus") files, $(size_of "$corpus") B | $result | scripts/fuzz.sh run $secs $n |"
    echo "$line" | tee -a "$build/runs.log"
  fi
  rm -rf "$work"
done
exit $status
