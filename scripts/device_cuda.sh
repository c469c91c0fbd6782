#!/usr/bin/env bash
# On a GPU machine (device tool): build the patched tree with CUDA, check the Radar ops CUDA vs CPU,
# and benchmark decode with and without Radar on random-weight GGUFs with real shapes.
#
#   bash scripts/device_cuda.sh build      # configure + build test-backend-ops, llama-bench, llama-quantize
#   bash scripts/device_cuda.sh test       # test-backend-ops -o RADAR_ATTN -b CUDA0 (CUDA vs CPU)
#   bash scripts/device_cuda.sh bench SHAPE DEPTHS   # e.g. llama-1b 0,8192,32768,131072
#
# The source is .dev/slim (a copy of the dev tree without docs/models; carried by the device tool).
# Results go to $OUT (or results/ when OUT is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${RADAR_SRC:-.dev/slim}
bld=build/cuda
out=${OUT:-results}
mkdir -p "$out"
case "${1:-}" in
    build)
        # -mno-amx: ggml's AMX path crashes in batched matmuls on AMX hosts (see CMakeLists.txt)
        cmake -S "$src" -B "$bld" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
            -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DGGML_NATIVE=ON \
            -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
            -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
            -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
            -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > "$out/configure.log" 2>&1
        time cmake --build "$bld" --target test-backend-ops llama-bench llama-quantize -j "$(nproc)" > "$out/build.log" 2>&1 \
            || { tail -40 "$out/build.log"; exit 1; }
        ;;
    test)
        "$bld/bin/test-backend-ops" -o RADAR_ATTN -b CUDA0 2>&1 | tee "$out/test-backend-ops-radar.log" | tail -15
        ;;
    bench)
        shape=${2:-llama-1b}
        depths=${3:-0,8192,32768,131072}
        m=/tmp/$shape-f16.gguf
        q=/tmp/$shape-q4_k_m.gguf
        if [ ! -f "$q" ]; then
            PYTHONPATH="$src/gguf-py" python3 scripts/make_random_gguf.py --shape "$shape" "$m" > /dev/null
            "$bld/bin/llama-quantize" "$m" "$q" Q4_K_M > "$out/quantize-$shape.log" 2>&1
            rm -f "$m"
        fi
        for mode in dense radar; do
            env_radar=0; [ $mode = radar ] && env_radar=${RADAR_SPEC:-1}
            LLAMA_RADAR=$env_radar "$bld/bin/llama-bench" -m "$q" -fa 1 -ngl 99 -p 0 -n 64 -d "$depths" -r 3 -o json \
                > "$out/bench-$shape-$mode.json" 2> "$out/bench-$shape-$mode.log" || { tail -20 "$out/bench-$shape-$mode.log"; exit 1; }
            python3 -c "import json,sys; [print('$mode', r['n_depth'], round(r['avg_ts'],1)) for r in json.load(open(sys.argv[1]))]" "$out/bench-$shape-$mode.json"
        done
        ;;
    fallback)
        # a head size the CUDA kernels don't cover: Radar must refuse (log line) and decode stay dense
        m=/tmp/d80-f16.gguf
        [ -f "$m" ] || PYTHONPATH="$src/gguf-py" python3 scripts/make_random_gguf.py --shape d80-small "$m" > /dev/null
        LLAMA_RADAR=1 "$bld/bin/llama-bench" -m "$m" -fa 1 -ngl 99 -p 0 -n 16 -d 8192 -r 1 -v 2>&1 \
            | grep -E "Radar|radar|avg_ts|t/s|tg16" | tee "$out/fallback-d80.log"
        ;;
    *) sed -n 2,10p "$0"; exit 2 ;;
esac
