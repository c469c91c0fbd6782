#!/usr/bin/env bash
# Syntax check of the Metal backend's C++ host code on Linux (no Apple SDK here): ggml-metal-ops.cpp (the
# Radar encoders) and ggml-metal-device.cpp (pipeline getters) of the patched tree, with g++ -fsyntax-only.
# The Objective-C file (ggml-metal-device.m, supports_op) and the Metal kernels are not compiled here:
# the kernels run through the emulation test (tests/test_metal_emulation.py), the rest in the macOS workflow.
#
#   scripts/check_metal_host.sh                                         # the tree the package would build
#   RADAR_DEV_LLAMA_DIR=$PWD/.dev/llama scripts/check_metal_host.sh     # a developer tree
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${RADAR_DEV_LLAMA_DIR:-}" ]; then
    tree=$RADAR_DEV_LLAMA_DIR
else
    tree=$(python3 "$root/native/prepare_source.py" --out "$root/build/metal-check" | tail -1)/vendor/llama.cpp
fi
cxx=${CXX:-g++}
src=$tree/ggml/src/ggml-metal
for f in ggml-metal-ops.cpp ggml-metal-device.cpp; do
    "$cxx" -std=c++17 -fsyntax-only -w -I"$tree/ggml/include" -I"$tree/ggml/src" -I"$src" "$src/$f"
    echo "check_metal_host: $f OK"
done
