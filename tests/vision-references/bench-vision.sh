#!/usr/bin/env bash
# Times the vision encoder of VidKV and of llama.cpp (clip through libmtmd: clip_bench.cpp) on the same mmproj files,
# alternating the two ROUNDS times, 2 threads; prints one JSON object per line:
#   {"file": ..., "round": r, "vidkv_ms": median of REPS passes, "llama_ms": median of REPS passes}
# usage: tests/vision-references/bench-vision.sh DIR... (each DIR holds model.gguf + mmproj.gguf, as `vidkv model
# random --shape smolvlm2-256m|llava-onevision-0.5b|qwen2.5-vl-3b -o DIR` writes them). Needs LLAMA_DIR as make.sh.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
llama="${LLAMA_DIR:-/tmp/llama.cpp}"
rounds="${ROUNDS:-3}" reps="${REPS:-3}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
g++ -O2 -std=c++17 -w -o "$work/clip_bench" "$here/clip_bench.cpp" \
    -I"$llama/include" -I"$llama/ggml/include" -I"$llama/tools/mtmd" \
    "$llama/build/tools/mtmd/libmtmd.a" "$llama/build/src/libllama.a" "$llama/build/vendor/hash/libvendor-hash.a" \
    "$llama/build/ggml/src/libggml.a" "$llama/build/ggml/src/libggml-cpu.a" "$llama/build/ggml/src/libggml-base.a" \
    -fopenmp -lpthread -ldl -lm
dotnet build "$root/src/VidKV.Cli" -c Release -nologo -v q >/dev/null
vidkv="dotnet $root/src/VidKV.Cli/bin/Release/net10.0/vidkv.dll"
for dir in "$@"; do
    size=$($vidkv model info -m "$dir/mmproj.gguf" --no-tensors | sed -n 's/.*clip.vision.image_size *= *\([0-9]*\).*/\1/p' | head -1)
    # One entry of the tower's own size: a square image of that size is one pass for LLaVA and Qwen-VL; for Idefics3
    # clip_bench times every slice pass, each of that size too.
    python3 -c "import sys; s=int(sys.argv[1]); sys.stdout.buffer.write(b'P6\n%d %d\n255\n' % (s, s) + bytes((x * 7 + y * 3 + c * 50) % 256 for y in range(s) for x in range(s) for c in range(3)))" "$size" > "$work/frame.ppm"
    for r in $(seq "$rounds"); do
        ours=$($vidkv bench vision -m "$dir/mmproj.gguf" -t 2 -r "$reps" -o json 2>/dev/null | sed -n 's/.*"ms_median": \([0-9.]*\).*/\1/p' | head -1)
        theirs=$("$work/clip_bench" "$dir/model.gguf" "$dir/mmproj.gguf" "$work/frame.ppm" 2 "$reps" | sed -n 's/.*"ms_per_pass_median": \([0-9.]*\).*/\1/p')
        echo "{\"file\": \"$dir\", \"round\": $r, \"vidkv_ms\": $ours, \"llama_ms\": $theirs}"
    done
done
