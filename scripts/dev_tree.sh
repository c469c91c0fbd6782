#!/usr/bin/env bash
# Developer loop for native/: keep the patch series as commits in a git tree of the pinned llama.cpp.
#
#   scripts/dev_tree.sh init     # .dev/llama = pinned tree + native/files + native/patches as commits
#   scripts/dev_tree.sh export   # native/patches/*.patch = git format-patch of those commits
#   scripts/dev_tree.sh build    # incremental build of libllama (+ test-backend-ops) from .dev/llama
#
# Build the package against the dev tree with: cmake -DRADAR_DEV_LLAMA_DIR=$PWD/.dev/llama ...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dev=$root/.dev/llama
G=(git -c user.email=radar@radar-gguf -c user.name=radar_gguf)
case "${1:-}" in
    init)
        tmp=$(mktemp -d)
        python3 "$root/native/prepare_source.py" --pristine --out "$tmp" >/dev/null
        rm -rf "$dev" && mkdir -p "$root/.dev" && cp -r "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp" "$dev" && rm -rf "$tmp"
        cd "$dev" && rm -rf .git && "${G[@]}" init -q && "${G[@]}" add -A && "${G[@]}" commit -qm "pinned llama.cpp (llama-cpp-python 0.3.36)"
        "${G[@]}" tag pinned
        for p in "$root"/native/patches/*.patch; do "${G[@]}" am -q "$p"; done
        git log --oneline
        ;;
    export)
        cd "$dev"
        rm -f "$root"/native/patches/*.patch
        git format-patch -q --no-signature --zero-commit -o "$root/native/patches" pinned..HEAD
        ls "$root/native/patches"
        ;;
    build)
        cmake -S "$root" -B "$root/build/dev" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRADAR_DEV_LLAMA_DIR="$dev" -DRADAR_BUILD_TESTS=ON >/dev/null
        cmake --build "$root/build/dev" --target llama test-backend-ops
        ;;
    *)
        sed -n 2,9p "$0"; exit 2 ;;
esac
