#!/usr/bin/env bash
# The main job on the bundled data: builds ziplora (installing missing
# packages), then merges the bundled subject and style LoRAs of the small
# random-weight test model. Output goes to ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
mkdir -p out
Z=./build/ziplora
D=tests/data/mini-sdxl
$Z inspect "$D/loras/content.kohya_sgm.safetensors" "$D/loras/style.kohya_sgm.safetensors" --plot out/inspect.svg
$Z merge --content "$D/loras/content.kohya_sgm.safetensors" --style "$D/loras/style.kohya_sgm.safetensors" \
   -o out/merged.safetensors
echo "wrote out/merged.safetensors and out/inspect.svg"
