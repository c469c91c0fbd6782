#!/usr/bin/env bash
# Compile check of the Radar CUDA backend on a machine without a GPU.
#
# Prepares the patched llama.cpp tree the way the package build does (native/prepare_source.py),
# then compiles every ggml-cuda/radar*.cu (entry points and kernels, native/files) and ggml-cuda/ggml-cuda.cu
# (which calls them, patch 0004) with `nvcc -c` for sm_90a, with the definitions and flags of ggml's CMake build. Exits non-zero on a compile error; skips with exit 0
# only when nvcc is absent.
#
#   scripts/check_cuda_compile.sh                         # the tree the package would build
#   RADAR_DEV_LLAMA_DIR=$PWD/.dev/llama scripts/check_cuda_compile.sh   # a developer tree
#   RADAR_CUDA_CHECK_FILES="radar-attn.cu" ...            # only some ggml-cuda sources
#
# ggml-cuda includes cublas_v2.h; when the CUDA toolkit has no cuBLAS headers, they are taken from
# the nvidia-cublas wheel of the same CUDA major version (pip download, headers only, cached in
# build/cuda-check/cublas).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build/cuda-check
arch=${RADAR_CUDA_CHECK_ARCH:-90a}

nvcc=${NVCC:-$(command -v nvcc || true)}
if [ -z "$nvcc" ] && [ -x /usr/local/cuda/bin/nvcc ]; then
    nvcc=/usr/local/cuda/bin/nvcc
fi
if [ -z "$nvcc" ]; then
    echo "check_cuda_compile: nvcc not found, CUDA compile check SKIPPED"
    exit 0
fi

if [ -n "${RADAR_DEV_LLAMA_DIR:-}" ]; then
    llama=$(cd "$RADAR_DEV_LLAMA_DIR" && pwd)
else
    pinned=$(python3 "$root/native/prepare_source.py" --out "$out/pinned" | tail -n 1)
    llama=$pinned/vendor/llama.cpp
fi
src=$llama/ggml/src
if [ ! -f "$src/ggml-cuda/radar.cu" ]; then
    echo "check_cuda_compile: $src/ggml-cuda/radar.cu is missing (native/files not laid over the tree?)" >&2
    exit 1
fi
files=${RADAR_CUDA_CHECK_FILES:-"$(cd "$src/ggml-cuda" && echo radar*.cu) ggml-cuda.cu"}

# cuBLAS headers
cuda_version=$("$nvcc" --version | sed -n 's/.*release \([0-9]*\)\.\([0-9]*\).*/\1.\2/p')
cuda_major=${cuda_version%%.*}
cuda_root=$(dirname "$(dirname "$(readlink -f "$(command -v "$nvcc")")")")
cublas_inc=()
if [ ! -f "$cuda_root/include/cublas_v2.h" ] && [ ! -f "$cuda_root/targets/x86_64-linux/include/cublas_v2.h" ]; then
    hdr=$out/cublas/include
    if [ ! -f "$hdr/cublas_v2.h" ]; then
        case "$cuda_major" in
            13) wheel_req="nvidia-cublas==13.1.1.3" ;;
            12) wheel_req="nvidia-cublas-cu12" ;;
            *)  echo "check_cuda_compile: no cuBLAS headers for CUDA $cuda_version" >&2; exit 1 ;;
        esac
        echo "check_cuda_compile: cuBLAS headers from $wheel_req"
        tmp=$(mktemp -d)
        trap 'rm -rf "$tmp"' EXIT
        python3 -m pip download -q --no-deps --only-binary=:all: "$wheel_req" -d "$tmp"
        python3 - "$tmp" "$hdr" <<'EOF'
import sys, zipfile, pathlib
tmp, hdr = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
hdr.mkdir(parents=True, exist_ok=True)
for whl in tmp.glob("*.whl"):
    with zipfile.ZipFile(whl) as z:
        for name in z.namelist():
            p = pathlib.PurePosixPath(name)
            if "include" in p.parts and p.suffix in (".h", ".hpp"):
                (hdr / p.name).write_bytes(z.read(name))
EOF
        rm -rf "$tmp"
        trap - EXIT
    fi
    cublas_inc=(-isystem "$hdr")
fi

# as ggml-cuda's CMakeLists.txt: GGML_CUDA_GRAPHS on (llama.cpp's default), fast math, size compression
flags=(
    -c -std=c++17 -O3 -DNDEBUG
    "--generate-code=arch=compute_${arch},code=[compute_${arch},sm_${arch}]"
    -DGGML_BACKEND_BUILD -DGGML_BACKEND_SHARED -DGGML_CUDA_USE_GRAPHS -DGGML_SCHED_MAX_COPIES=4 -DGGML_SHARED
    -D_GNU_SOURCE -D_XOPEN_SOURCE=600 -Dggml_cuda_EXPORTS
    -I"$src/ggml-cuda/.." -I"$src/." -I"$src/../include" "${cublas_inc[@]}"
    -use_fast_math -extended-lambda
    -Xcompiler=-fPIC -Xcompiler "-Wall -Wextra -Wno-pedantic -Wno-unused-function"
)
if [ "$cuda_major" -ge 13 ] || { [ "$cuda_major" -eq 12 ] && [ "${cuda_version#*.}" -ge 8 ]; }; then
    flags+=(-compress-mode=size)
fi

mkdir -p "$out/obj"
status=0
for f in $files; do
    start=$(date +%s)
    log=$out/obj/${f%.cu}.log
    if "$nvcc" "${flags[@]}" "$src/ggml-cuda/$f" -o "$out/obj/${f%.cu}.o" >"$log" 2>&1; then
        echo "check_cuda_compile: $f OK ($(( $(date +%s) - start )) s, sm_$arch)"
        grep -i "warning" "$log" | grep -i "radar" || true
    else
        echo "check_cuda_compile: $f FAILED" >&2
        cat "$log" >&2
        status=1
    fi
done
exit $status
