#!/usr/bin/env bash
# Compiles mtmd_reference.cpp (this folder) against a llama.cpp tree built as make.sh says, into the path given:
#   tests/vision-references/build-reference.sh OUT   (LLAMA_DIR: the tree, default /tmp/llama.cpp)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
llama="${LLAMA_DIR:-/tmp/llama.cpp}"
g++ -O2 -std=c++17 -w -o "$1" "$here/mtmd_reference.cpp" \
    -I"$llama/include" -I"$llama/ggml/include" -I"$llama/tools/mtmd" \
    "$llama/build/tools/mtmd/libmtmd.a" "$llama/build/src/libllama.a" \
    "$llama/build/ggml/src/libggml.a" "$llama/build/ggml/src/libggml-cpu.a" "$llama/build/ggml/src/libggml-base.a" \
    "$llama/build/vendor/hash/libvendor-hash.a" -fopenmp -lpthread -ldl -lm
