#!/usr/bin/env bash
# The main job on the bundled data, end to end: builds ziplora (installing
# missing Debian packages), then on the bundled random-weight SDXL-family test
# model (tests/data/mini-sdxl) it
#   1. inspects the subject and style LoRAs (sparsity, column similarity),
#   2. learns ZipLoRA mergers (`ziplora zip`, paper defaults, references
#      generated with each LoRA alone) and writes ONE merged standard LoRA,
#      the mergers, a JSON report, an SVG plot and a preview grid,
#   3. generates an image with the merged LoRA.
# The bundled model has random weights: its pictures are noise. Outputs: ./out/
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)" >/dev/null
mkdir -p out
Z=./build/ziplora
M=tests/data/mini-sdxl
C=$M/loras/content.kohya_sgm.safetensors
S=$M/loras/style.kohya_sgm.safetensors
set -x
$Z inspect "$C" "$S" --plot out/inspect.svg
$Z zip --model "$M" --content "$C" --style "$S" \
   --content-prompt "a photo of sks dog" --style-prompt "a painting in zwx style" \
   -o out/merged.safetensors --mergers-out out/mergers.safetensors \
   --report out/report.json --plot out/zip.svg --preview 2
$Z inspect out/merged.safetensors
$Z generate --model "$M" --lora out/merged.safetensors -p "a photo of sks dog in zwx style" \
   --steps 20 --seed 1 -o out/generated.png
set +x
echo "done: out/merged.safetensors (the merged LoRA), out/report.json, out/zip.svg, out/merged.preview.png, out/generated.png"
