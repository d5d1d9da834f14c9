#!/usr/bin/env bash
# Runs the whole VidKV test suite, as CI does. Needs only the .NET 10 SDK and ../shared/testdata
# (or VIDKV_TESTDATA pointing at it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
dotnet test VidKV.slnx -c Release -nologo
