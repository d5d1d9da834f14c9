#!/usr/bin/env bash
# Runs the whole VidKV test suite, as CI does. Needs the .NET 10 SDK, ffmpeg and chromium (installed below when missing) and ../shared/testdata
# (or VIDKV_TESTDATA pointing at it). The kernel tests run three times more: without the emitted kernels (the
# managed AVX-512 ones), with AVX-512 and then AVX2 switched off, so every vector path and the scalar fallbacks run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
# The video tests run Debian's ffmpeg and ffprobe as processes, and the web page's test drives Debian's chromium
# (headless, through Playwright; no browser is downloaded); install what is missing (sudo only when not root).
missing=""
if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then missing="ffmpeg"; fi
if ! command -v chromium >/dev/null; then missing="$missing chromium"; fi
if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update && $sudo apt-get install -y $missing
fi
dotnet test VidKV.slnx -c Release -nologo
kernels="FullyQualifiedName~KernelTests|FullyQualifiedName~DequantizeTests|FullyQualifiedName~BlockTests"
echo "== kernel tests without emitted kernels =="
VIDKV_EMIT=0 dotnet test VidKV.slnx -c Release -nologo --no-build --filter "$kernels"
echo "== kernel tests without AVX-512 =="
DOTNET_EnableAVX512=0 dotnet test VidKV.slnx -c Release -nologo --no-build --filter "$kernels"
echo "== kernel tests without AVX2 =="
DOTNET_EnableAVX2=0 dotnet test VidKV.slnx -c Release -nologo --no-build --filter "$kernels"
