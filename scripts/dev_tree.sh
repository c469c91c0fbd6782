#!/usr/bin/env bash
# Developer loop for native/: keep radar_gguf's changes to llama.cpp as commits in a git tree of the pin.
#
#   scripts/dev_tree.sh init     # .dev/llama = pinned tree + native/files (one commit) + native/patches as commits
#   scripts/dev_tree.sh export   # native/files = the files the pin lacks, native/patches = edits to upstream files
#   scripts/dev_tree.sh build    # incremental build of libllama (+ test-backend-ops) from .dev/llama
#
# Build the package against the dev tree with: cmake -DRADAR_DEV_LLAMA_DIR=$PWD/.dev/llama ...
#
# native/ holds two things: native/files/<path> are whole new files (the Radar kernels: ggml-cpu/radar.cpp,
# ggml-cuda/radar*.cu*), laid over the pinned tree as they are; native/patches/*.patch is a git format-patch
# series of edits to upstream files only (new ops, dispatch lines, source lists, llama.cpp's KV cache).
# In .dev/llama, `pinned` is the tag of the upstream tree; the commit after it lays native/files, then one
# commit per patch. Work there with git as usual (commit --fixup + rebase -i --autosquash, amend, new
# commits), then `export`:
#   - every file that exists at HEAD but not in `pinned` is written to native/files/<path> (its content at
#     HEAD, wherever in the series it was added or changed); files of native/files no longer at HEAD go;
#   - every commit after `pinned` becomes a patch, limited to upstream files (a commit that touches only
#     new files gives no patch).
# To add a new file: create it at its path in the llama.cpp tree of .dev/llama, commit it (with the patch
# that uses it, or on its own) and export; it lands in native/files and needs no patch. (A new .cu file in
# ggml-cuda/ is built without a CMake edit: ggml-cuda globs *.cu; a new ggml-cpu source needs its line in
# ggml-cpu/CMakeLists.txt, which is an upstream edit, so a patch.)
# `init` keeps the modification time of every file whose content did not change, so `build` stays incremental.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dev=$root/.dev/llama
G=(git -c user.email=radar@radar-gguf -c user.name=radar_gguf)

# make the tree $2 equal to the tree $1: write only files whose content differs (the others keep their
# mtime), remove what $1 lacks
sync_tree() {
    python3 - "$1" "$2" <<'EOF'
import filecmp, os, shutil, sys
src, dst = sys.argv[1:]
os.makedirs(dst, exist_ok=True)
keep = set()
for d, dirs, files in os.walk(src):
    rel = os.path.relpath(d, src)
    os.makedirs(os.path.join(dst, rel), exist_ok=True)
    for f in files:
        s, t = os.path.join(d, f), os.path.normpath(os.path.join(dst, rel, f))
        keep.add(t)
        if os.path.islink(s) or os.path.islink(t):
            if os.path.lexists(t):
                os.remove(t)
            shutil.copy2(s, t, follow_symlinks=False)
        elif not (os.path.isfile(t) and filecmp.cmp(s, t, shallow=False)):
            if os.path.lexists(t):
                os.remove(t)
            shutil.copyfile(s, t)
            shutil.copymode(s, t)
for d, dirs, files in os.walk(dst, topdown=False):
    for f in files:
        t = os.path.normpath(os.path.join(d, f))
        if t not in keep:
            os.remove(t)
    if d != dst and not os.listdir(d) and not os.path.isdir(os.path.join(src, os.path.relpath(d, dst))):
        os.rmdir(d)
EOF
}

case "${1:-}" in
    init)
        mkdir -p "$root/.dev"
        tmp=$(mktemp -d "$root/.dev/init.XXXXXX")
        trap 'rm -rf "$tmp"' EXIT
        python3 "$root/native/prepare_source.py" --pristine --out "$tmp/sdist" >/dev/null
        new=$tmp/llama
        mv "$tmp/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp" "$new"
        cd "$new"
        rm -rf .git && "${G[@]}" init -q && "${G[@]}" add -A && "${G[@]}" commit -qm "pinned llama.cpp (llama-cpp-python 0.3.36)"
        "${G[@]}" tag pinned
        if [ -d "$root/native/files" ]; then
            cp -r "$root/native/files/." "$new/"
            "${G[@]}" add -A && "${G[@]}" commit -qm "radar_gguf: new files (native/files)"
        fi
        for p in "$root"/native/patches/*.patch; do "${G[@]}" am -q "$p"; done
        sync_tree "$new" "$dev"
        cd "$dev" && git log --oneline
        ;;
    export)
        cd "$dev"
        mapfile -t added < <(git diff --name-only --no-renames --diff-filter=A pinned HEAD)
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        exclude=()
        for f in "${added[@]}"; do
            mkdir -p "$tmp/$(dirname "$f")"
            git show "HEAD:$f" > "$tmp/$f"
            exclude+=(":(exclude)$f")
        done
        sync_tree "$tmp" "$root/native/files"
        rm -f "$root"/native/patches/*.patch
        git format-patch -q --no-signature --zero-commit -o "$root/native/patches" pinned..HEAD -- . "${exclude[@]}"
        (cd "$root/native" && find files -type f | sort && ls patches/*.patch)
        ;;
    build)
        cmake -S "$root" -B "$root/build/dev" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRADAR_DEV_LLAMA_DIR="$dev" -DRADAR_BUILD_TESTS=ON >/dev/null
        cmake --build "$root/build/dev" --target llama test-backend-ops
        ;;
    *)
        sed -n 2,9p "$0"; exit 2 ;;
esac
