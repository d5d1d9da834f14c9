#!/usr/bin/env bash
# Makes the vision reference files in this folder with llama.cpp (ngxson/llama.cpp at 3f545bec, CPU build with
# GGML_NATIVE=ON, static libraries) and VidKV's own random-model writer. Needs LLAMA_DIR (default /tmp/llama.cpp)
# holding that source tree with a finished `cmake --build build --target llama-mtmd-cli`.
#   tests/vision-references/make.sh
# For each tiny model pair (text GGUF + mmproj GGUF of one family, random weights from `vidkv model random`), each
# image of ../shared/testdata/vision/images and each prompt below, mtmd_reference writes <pair>.<image>.<n>.json (chunk
# layout and greedy steps) and, for the first prompt, <pair>.<image>.embd.f32.bin (the image chunks' embeddings).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
images="$root/../shared/testdata/vision/images"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$here/build-reference.sh" "$work/mtmd_reference"

dotnet build "$root/src/VidKV.Cli" -c Release -nologo -v q >/dev/null
vidkv="dotnet $root/src/VidKV.Cli/bin/Release/net10.0/vidkv.dll"
prompts=("<__media__>Describe the picture." "What colour is the square?<__media__> Answer:" $'<__media__>\nA:')
run_pair() { # name, text model, mmproj
    for image in gradient_97x61 pattern_64x64; do
        for i in "${!prompts[@]}"; do
            "$work/mtmd_reference" "$2" "$3" "$images/$image.ppm" "${prompts[$i]}" 8 "$work/out" 2>/dev/null
            cp "$work/out.json" "$here/$1.$image.$i.json"
            if [ "$i" = 0 ]; then cp "$work/out.embd.f32.bin" "$here/$1.$image.embd.f32.bin"; fi
        done
    done
}
shared="$root/../shared/testdata"
run_pair shared-llava-siglip "$shared/models/tiny-qwen2-random.gguf" "$shared/vision/models/tiny-llava-siglip-random.mmproj.gguf"
for pair in ${PAIRS-tiny-idefics3 tiny-llava tiny-qwen2vl tiny-qwen25vl}; do
    $vidkv model random --shape "$pair" --type f32 -o "$work/$pair" >/dev/null
    run_pair "$pair" "$work/$pair/model.gguf" "$work/$pair/mmproj.gguf"
done
sha256sum "$here"/*.json "$here"/*.bin | sed "s|$here/||" > "$here/SHA256SUMS"
echo "references written to $here"
