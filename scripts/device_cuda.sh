#!/usr/bin/env bash
# On a GPU machine: build the patched tree with CUDA, check the Radar ops CUDA vs CPU,
# and benchmark decode with and without Radar on random-weight GGUFs with real shapes.
#
#   bash scripts/device_cuda.sh build      # configure + build test-backend-ops, llama-bench, llama-quantize
#   bash scripts/device_cuda.sh test       # test-backend-ops -o RADAR_ATTN -b CUDA0 (summaries + attention, CUDA vs CPU)
#   bash scripts/device_cuda.sh bench SHAPE DEPTHS [KV]   # e.g. llama-1b 0,8192,32768,131072 "f16 q8_0" (REPS=3 NGEN=64)
#   bash scripts/device_cuda.sh prefill SHAPE N           # prompt speed with and without Radar summaries
#   bash scripts/device_cuda.sh e2e SHAPE DEPTH           # decode logits: Radar CUDA vs CPU, top-k >= all vs dense
#   bash scripts/device_cuda.sh multigpu SHAPE DEPTH      # 2 GPUs, -sm layer: logits vs 1 GPU, and speed
#   bash scripts/device_cuda.sh profile SHAPE DEPTH       # ncu: time of each decode attention kernel (KERNELS=regex)
#   bash scripts/device_cuda.sh trace SHAPE DEPTHS        # CUPTI trace of whole decode steps: where a step's time goes
#   bash scripts/device_cuda.sh long SHAPE DEPTHS          # decode at 128k-1M over a tiled cache (scripts/long_context.py)
#   bash scripts/device_cuda.sh serve SHAPE DEPTH [cpu]   # llama-server, 1/4/8 concurrent streams (scripts/bench_serve.py)
#
# The source is .dev/slim (a copy of the dev tree without docs/models, small enough to copy to the GPU machine); the
# e2e checks need the pinned bindings (build/dev/pinned/llama_cpp_python-0.3.36/llama_cpp, carried).
# Results go to $OUT (or results/ when OUT is unset).
set -euo pipefail
cd "$(dirname "$0")/.."
src=${RADAR_SRC:-.dev/slim}
bld=${RADAR_BUILD_DIR:-build/cuda}  # RADAR_BUILD_DIR: another build of the tree (e.g. a CPU one)
out=${OUT:-results}
bindings=build/dev/pinned/llama_cpp_python-0.3.36
mkdir -p "$out"
scratch=${RADAR_SCRATCH:-build/scratch}  # models and logs of this machine (random-weight GGUFs are GBs)
mkdir -p "$scratch"

# random-weight Q4_K_M GGUF of a real shape, made once per machine
model() {
    local m=$scratch/$1-f16.gguf q=$scratch/$1-q4_k_m.gguf
    if [ ! -f "$q" ]; then
        # (an F16 file already there, e.g. written during the build, is used as it is)
        [ -f "$m" ] || PYTHONPATH="$src/gguf-py" python3 scripts/make_random_gguf.py --shape "$1" "$m" > /dev/null
        "$bld/bin/llama-quantize" "$m" "$q" Q4_K_M > "$out/quantize-$1.log" 2>&1
        rm -f "$m"
    fi
    echo "$q"
}
# llama-bench, dense then Radar (LLAMA_RADAR=${RADAR_SPEC:-1}), same arguments: NAME-{dense,radar}.json
# (MODES="radar": Radar only)
# and the verbose log (buffer sizes) gzipped beside it
bench_modes() {
    local name=$1 mode env_radar
    shift
    for mode in ${MODES:-dense radar}; do
        env_radar=0
        [ $mode = radar ] && env_radar=${RADAR_SPEC:-1}
        LLAMA_RADAR=$env_radar "$bld/bin/llama-bench" "$@" -o json -v > "$out/$name-$mode.json" 2> "$out/$name-$mode.log" \
            || { tail -20 "$out/$name-$mode.log"; exit 1; }
        python3 -c "import json,sys; [print('$name-$mode', r['n_prompt'] or r['n_depth'], round(r['avg_ts'],1)) for r in json.load(open(sys.argv[1]))]" \
            "$out/$name-$mode.json"
        grep -E "KV buffer size|Radar buffer size" "$out/$name-$mode.log" | tail -2 || true
        gzip -f "$out/$name-$mode.log"
    done
}

# a CUPTI activity tracer that the CUDA driver loads into any program (CUDA_INJECTION64_PATH): every kernel,
# memcpy, memset and runtime API call with its start and end, the kernels inside CUDA graphs too, at the
# program's own speed (no replay, unlike ncu). Lines: N,id,name | K,start,end,graphId,nameId |
# M,start,end,copyKind,bytes,graphId | S,start,end,bytes,graphId | R,start,end,api (ns, one clock).
# CUPTI_TRACE_NO_API=1 leaves out the runtime API calls. scripts/profile_summary.py reads the file.
tracer() {
    local so=$scratch/libcupti_trace.so inc lib
    if [ ! -f "$so" ]; then
        inc=$(dirname "$(find /usr/local/cuda/ -name cupti.h 2>/dev/null | head -1)")
        lib=$(dirname "$(find /usr/local/cuda/ -name 'libcupti.so' 2>/dev/null | head -1)")
        g++ -O2 -shared -fPIC -I"$inc" scripts/cupti_trace.cpp -o "$so" -L"$lib" -lcupti -Wl,-rpath,"$lib" >&2
    fi
    echo "$so"
}

# the GPU machine's python3 may bring an older libstdc++ than the one the library was built with
preload_libstdcxx() {
    local lib
    lib=$(g++ -print-file-name=libstdc++.so.6 2>/dev/null || true)
    [ -f "$lib" ] && export LD_PRELOAD=$lib
    echo "python3: $(command -v python3), LD_PRELOAD=${LD_PRELOAD:-}" >&2
}
case "${1:-}" in
    build)
        # -mno-amx: ggml's AMX path crashes in batched matmuls on AMX hosts (see CMakeLists.txt)
        cmake -S "$src" -B "$bld" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=ON \
            -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90a -DGGML_NATIVE=ON \
            -DCMAKE_C_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
            -DCMAKE_CXX_FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" \
            -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
            -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
            -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF > "$out/configure.log" 2>&1
        time cmake --build "$bld" --target ${BUILD_TARGETS:-test-backend-ops llama-bench llama-quantize} -j "$(nproc)" > "$out/build.log" 2>&1 \
            || { tail -40 "$out/build.log"; exit 1; }
        ;;
    test)
        # each RADAR_ATTN case is the summaries of every segment, then one decode step over the selection:
        # summarize and attention in one graph (-o RADAR_SUMMARIZE matches no case: an op filter names the
        # output's op)
        for op in RADAR_ATTN; do
            log=$out/test-backend-ops-$(echo $op | tr A-Z_ a-z-)-cuda-vs-cpu.txt
            "$bld/bin/test-backend-ops" -o $op -b CUDA0 > "$log" 2>&1 || { tail -30 "$log"; exit 1; }
            echo "$op: $(grep -c "^  $op(.*OK" "$log") cases OK, $(grep -c "^  $op(.*FAIL" "$log") FAIL"; tail -3 "$log"
        done
        ;;
    bench)
        shape=${2:-llama-1b}
        depths=${3:-0,8192,32768,131072}
        q=$(model "$shape")
        for kv in ${4:-f16}; do
            bench_modes "bench-$shape-$kv" -m "$q" -fa 1 -ngl 99 -p 0 -n "${NGEN:-64}" -d "$depths" -r "${REPS:-3}" -ctk "$kv" -ctv "$kv"
        done
        ;;
    prefill)
        shape=${2:-llama-1b}
        n=${3:-16384}
        q=$(model "$shape")
        bench_modes "prefill-$shape" -m "$q" -fa 1 -ngl 99 -p "$n" -n 0 -r 3
        ;;
    e2e)
        shape=${2:-llama-1b}
        depth=${3:-8192}
        q=$(model "$shape")
        export PYTHONPATH=$bindings LLAMA_CPP_LIB_PATH=$bld/bin
        preload_libstdcxx
        run() { # name ngl radar-spec
            LLAMA_RADAR=$3 python3 scripts/radar_logits.py run "$q" --ngl "$2" --depth "$depth" --steps 32 \
                --threads "$(nproc)" --out "$scratch/e2e-$1.npy" 2> "$scratch/e2e-$1.log" || { tail -20 "$scratch/e2e-$1.log"; exit 1; }
        }
        # one threshold on both devices (the default differs: 12288 on the CPU, 65536 on a GPU)
        spec=${RADAR_SPEC:-dense_below=4096}
        run cpu-dense 0 0
        run cpu-radar 0 "$spec"
        run cuda-dense 99 0
        run cuda-radar 99 "$spec"
        run cuda-radar-all 99 "$spec,top_k=1000000,rescore=0" # every segment: one stage (a mass target would refuse 4M candidates)
        cmp() { python3 scripts/radar_logits.py compare "$scratch/e2e-$1.npy" "$scratch/e2e-$2.npy" --envelope "$scratch/e2e-$3.npy" "$scratch/e2e-$4.npy"; }
        {
            cmp cpu-radar cuda-radar cpu-dense cuda-dense
            cmp cuda-dense cuda-radar-all cpu-dense cuda-dense
            cmp cuda-dense cuda-radar cpu-dense cuda-dense
        } | tee "$out/e2e-$shape-$depth.jsonl"
        grep -h "Radar on\|cannot run" $scratch/e2e-*radar*.log | sort | uniq -c
        ;;
    multigpu)
        shape=${2:-llama-1b}
        depth=${3:-8192}
        q=$(model "$shape")
        export PYTHONPATH=$bindings LLAMA_CPP_LIB_PATH=$bld/bin
        preload_libstdcxx
        for spec in 0 "${RADAR_SPEC:-dense_below=4096}"; do
            CUDA_VISIBLE_DEVICES=0 LLAMA_RADAR=$spec python3 scripts/radar_logits.py run "$q" --ngl 99 --split-mode none \
                --depth "$depth" --steps 32 --out "$scratch/mg1-${spec:0:1}.npy" 2> "$scratch/mg1-${spec:0:1}.log"
            LLAMA_RADAR=$spec python3 scripts/radar_logits.py run "$q" --ngl 99 --split-mode layer \
                --depth "$depth" --steps 32 --out "$scratch/mg2-${spec:0:1}.npy" 2> "$scratch/mg2-${spec:0:1}.log"
        done
        { grep -o "assigned to device CUDA[0-9]*" $scratch/mg2-d.log | sort | uniq -c; grep -h "Radar buffer size\|Radar on" $scratch/mg2-d.log; }
        {
            python3 scripts/radar_logits.py compare $scratch/mg1-d.npy $scratch/mg2-d.npy --envelope $scratch/mg1-0.npy $scratch/mg2-0.npy
        } | tee "$out/multigpu-$shape-$depth.jsonl"
        bench_modes "bench-2gpu-$shape" -m "$q" -fa 1 -ngl 99 -sm layer -p 0 -n 64 -d "$depth" -r 3
        ;;
    profile)
        # ncu replays each kernel alone: exact per-kernel times, not a step's wall time (trace gives that).
        # KERNELS: regex of the kernels timed (default: the decode attention kernels); LAUNCH_SKIP / LAUNCH_COUNT:
        # the window among the matching launches; NGEN: decode tokens
        shape=${2:-llama-8b}
        depth=${3:-32768}
        q=$(model "$shape")
        ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
        for mode in ${MODES:-dense radar}; do
            env_radar=0; [ $mode = radar ] && env_radar=${RADAR_SPEC:-1}
            LLAMA_RADAR=$env_radar "$ncu" --clock-control none --metrics gpu__time_duration.sum --csv \
                -k regex:"${KERNELS:-flash_attn_ext_vec|flash_attn_combine|radar_(score|select|attn|rf)}" \
                --launch-skip "${LAUNCH_SKIP:-0}" --launch-count "${LAUNCH_COUNT:-400}" \
                "$bld/bin/llama-bench" -m "$q" -fa 1 -ngl 99 -p 0 -n "${NGEN:-8}" -d "$depth" -r 1 > "$scratch/ncu-$mode.csv" 2> $scratch/ncu-$mode.log \
                || { tail -5 $scratch/ncu-$mode.log; }
            python3 scripts/ncu_summary.py "$scratch/ncu-$mode.csv" | tee "$out/profile-$shape-$depth-$mode.txt"
        done
        ;;
    trace)
        # every kernel of whole decode steps at the program's own speed (CUPTI; CUDA graphs kept), dense then
        # Radar, one llama-bench run over all DEPTHS each: profile-SHAPE-MODE.{txt,json}, -steps.csv (per step)
        # and the run's llama-bench JSON (the traced speed; bench gives the plain one)
        shape=${2:-llama-8b}
        depths=${3:-1024,65536,131072}
        q=$(model "$shape")
        so=$(tracer)
        for mode in ${MODES:-dense radar}; do
            env_radar=0; [ $mode = radar ] && env_radar=${RADAR_SPEC:-1}
            CUDA_INJECTION64_PATH=$so CUPTI_TRACE_OUT=$scratch/trace-$mode.csv LLAMA_RADAR=$env_radar \
                "$bld/bin/llama-bench" -m "$q" -fa 1 -ngl 99 -p 0 -n "${NGEN:-32}" -d "$depths" -r 1 -o json \
                > "$out/trace-$shape-$mode.json" 2> "$scratch/trace-$mode.log" || { tail -20 "$scratch/trace-$mode.log"; exit 1; }
            python3 scripts/profile_summary.py "$scratch/trace-$mode.csv" --depths "$depths" --layers "${LAYERS:-32}" \
                --label "$shape $mode" --out "$out/profile-$shape-$mode" | grep -E "^#|^## |^wall|^kernels|^gap|^launches"
        done
        ;;
    long)
        # decode at 128k-1M tokens over a cache filled by tiling one prefilled block, Radar then dense
        # (KV: cache type, default q8_0; BLOCK: the prefilled block; CHECK: a depth also prefilled for real;
        # UBATCH: the physical batch, default 512):
        # long-SHAPE-KV-MODE.json, the log's buffer sizes (memory per component) printed
        shape=${2:-llama-8b}
        depths=${3:-131072,262144,524288,1048576}
        kv=${KV:-q8_0}
        q=$(model "$shape")
        export PYTHONPATH=scripts:$bindings LLAMA_CPP_LIB_PATH=$bld/bin
        preload_libstdcxx
        for mode in ${MODES:-radar dense}; do
            env_radar=0; [ $mode = radar ] && env_radar=${RADAR_SPEC:-1}
            name=long-$shape-$kv-$mode
            LLAMA_RADAR=$env_radar python3 scripts/long_context.py "$q" --ngl 99 --ctk "$kv" --block "${BLOCK:-65536}" \
                --check "${CHECK:-131072}" --depths "$depths" --steps "${NGEN:-32}" --ubatch "${UBATCH:-512}" \
                --json "$out/$name.json" \
                2> "$out/$name.log" | sed "s/^/$mode /" || { tail -20 "$out/$name.log"; exit 1; }
            grep -E "buffer size" "$out/$name.log" | sort -u || true
            gzip -f "$out/$name.log"
        done
        ;;
    serve)
        # the launcher (radar_gguf.serve, stdlib only) over this build's llama-server (BUILD_TARGETS must name it);
        # "cpu": the same on this host's cores, no GPU (CUDA_VISIBLE_DEVICES empty)
        shape=${2:-llama-8b}
        depth=${3:-65536}
        q=$(model "$shape")
        export RADAR_GGUF_LLAMA_SERVER=$bld/bin/llama-server PYTHONPATH=$src/gguf-py:$bindings LLAMA_CPP_LIB_PATH=$bld/bin
        preload_libstdcxx
        if [ "${4:-gpu}" = cpu ]; then
            CUDA_VISIBLE_DEVICES= python3 scripts/bench_serve.py "$q" --depth "$depth" --streams "${STREAMS:-1,4,8}" \
                --max-tokens "${NGEN:-64}" --json "$out/serve-$shape-$depth-cpu.json" -- --gpu-layers 0 --threads "$(nproc)"
        else
            python3 scripts/bench_serve.py "$q" --depth "$depth" --streams "${STREAMS:-1,4,8}" --max-tokens "${NGEN:-64}" \
                --json "$out/serve-$shape-$depth-gpu.json" -- --gpu-layers 99
        fi
        ;;
    fallback)
        # a head size the CUDA kernels don't cover: Radar must refuse (log line) and decode stay dense
        m=$scratch/d80-f16.gguf
        [ -f "$m" ] || PYTHONPATH="$src/gguf-py" python3 scripts/make_random_gguf.py --shape d80-small "$m" > /dev/null
        LLAMA_RADAR=1 "$bld/bin/llama-bench" -m "$m" -fa 1 -ngl 99 -p 0 -n 16 -d 8192 -r 1 -v 2>&1 \
            | grep -E "Radar|radar|avg_ts|t/s|tg16" | tee "$out/fallback-d80.log"
        ;;
    *) sed -n 2,10p "$0"; exit 2 ;;
esac
