#!/usr/bin/env bash
# Runs the whole VidKV test suite, as CI does. Needs only the .NET 10 SDK and ../shared/testdata
# (or VIDKV_TESTDATA pointing at it). The kernel tests run three times more: without the emitted kernels (the
# managed AVX-512 ones), with AVX-512 and then AVX2 switched off, so every vector path and the scalar fallbacks run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
dotnet test VidKV.slnx -c Release -nologo
kernels="FullyQualifiedName~KernelTests|FullyQualifiedName~DequantizeTests|FullyQualifiedName~BlockTests"
echo "== kernel tests without emitted kernels =="
VIDKV_EMIT=0 dotnet test VidKV.slnx -c Release -nologo --no-build --filter "$kernels"
echo "== kernel tests without AVX-512 =="
DOTNET_EnableAVX512=0 dotnet test VidKV.slnx -c Release -nologo --no-build --filter "$kernels"
echo "== kernel tests without AVX2 =="
DOTNET_EnableAVX2=0 dotnet test VidKV.slnx -c Release -nologo --no-build --filter "$kernels"
