#!/usr/bin/env bash
# Makes the references of the built-in world model (models/world-tiny) with llama.cpp's mtmd (ngxson/llama.cpp at
# 3f545bec, CPU build with GGML_NATIVE=ON, static libraries, as tests/vision-references/make.sh): for each of five
# held-out worlds (seeds 2^62 + k, never trained on) the frames of its ticks drawn at the tower's size, laid out as
# `vidkv watch` lays out a stream ("\nFrame from mm:ss:" before each frame), then a question about it asked as watch asks
# one ("\n\n" closing the stream, "\n{question}\n"), and mtmd's greedy answer. WorldModelTests checks that VidKV gives
# the same chunks, rows and greedy ids.
#   LLAMA_DIR=/tmp/llama.cpp tests/world-references/make.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
model="$root/models/world-tiny"
ticks=12
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$root/tests/vision-references/build-reference.sh" "$work/mtmd_reference"

dotnet build "$root/src/VidKV.Cli" -c Release -nologo -v q >/dev/null
vidkv="dotnet $root/src/VidKV.Cli/bin/Release/net10.0/vidkv.dll"
# the tower's side: frames go in unresized, so both engines see the same pixels
size=$($vidkv model info -m "$model/mmproj.gguf" | awk '$1 == "clip.vision.image_size" { print $3 }')
for k in 0 1 2 3 4; do
    seed=$(( (1 << 62) + k ))
    $vidkv world generate -s "$seed" --ticks "$ticks" --size "$size" --fps 1 --questions 1 -o "$work/clip$k.mp4" --frames "$work/clip$k" 2>/dev/null
    question=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['questions'][0]['question'])" "$work/clip$k.json")
    prompt=""
    images=""
    for ((t = 0; t < ticks; t++)); do
        prompt+=$(printf '\nFrame from %02d:%02d:<__media__>' $((t / 60)) $((t % 60)))
        images+="${images:+,}$work/clip$k/tick-$(printf %06d "$t").ppm"
    done
    prompt+=$'\n\n\n'"$question"$'\n'
    "$work/mtmd_reference" "$model/model.gguf" "$model/mmproj.gguf" "$images" "$prompt" 16 "$work/out" 2>/dev/null
    cp "$work/out.json" "$here/clip$k.json"
done
