// Radar sparse decode attention, steps 4-5 of GGML_OP_RADAR_ATTN (one decode query per stream):
//   radar_attn_kernel:  flash-decoding over sinks + kept segments + tail, each block of a head taking every
//                       gridDim.x-th tile of those cells; partial (max, sum, VKQ) per block. With per-head
//                       selection and a small top_k the block picks the top-k itself (no radar_select; with
//                       two stages, from the exact scores of the rescored candidates). The
//                       last block of a head to finish merges the parts (after radar_score_summary_gqa)
//   radar_attn_combine: otherwise merges the blocks of a head and adds the sink to the denominator
#include "radar-common.cuh"

#ifdef RADAR_CUDA_AVAILABLE

// VE consecutive values of one V row per thread
template <ggml_type type_V>
struct radar_v_row;

template <>
struct radar_v_row<GGML_TYPE_F32> {
    static constexpr int ne = 4;
    float4 x;

    __device__ __forceinline__ void load(const char * row, const int i0, const bool valid) {
        x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (valid) {
            ggml_cuda_memcpy_1<16>(&x, (const float *) row + i0);
        }
    }

    __device__ __forceinline__ void mad(float * acc, const float p) const {
        acc[0] = fmaf(p, x.x, acc[0]);
        acc[1] = fmaf(p, x.y, acc[1]);
        acc[2] = fmaf(p, x.z, acc[2]);
        acc[3] = fmaf(p, x.w, acc[3]);
    }
};

template <>
struct radar_v_row<GGML_TYPE_F16> {
    static constexpr int ne = 8;
    __align__(16) half2 x[4];

    __device__ __forceinline__ void load(const char * row, const int i0, const bool valid) {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            x[l] = make_half2(0.0f, 0.0f);
        }
        if (valid) {
            ggml_cuda_memcpy_1<16>(x, (const half *) row + i0);
        }
    }

    __device__ __forceinline__ void mad(float * acc, const float p) const {
#pragma unroll
        for (int l = 0; l < 4; ++l) {
            const float2 f = __half22float2(x[l]);
            acc[2*l + 0] = fmaf(p, f.x, acc[2*l + 0]);
            acc[2*l + 1] = fmaf(p, f.y, acc[2*l + 1]);
        }
    }
};

template <>
struct radar_v_row<GGML_TYPE_Q8_0> {
    static constexpr int ne = 8;
    __align__(8) int8_t x[8];
    float d;

    __device__ __forceinline__ void load(const char * row, const int i0, const bool valid) {
        const block_q8_0 * b = (const block_q8_0 *) row + i0/QK8_0;
#pragma unroll
        for (int l = 0; l < 8; ++l) {
            x[l] = 0;
        }
        d = 0.0f;
        if (valid) {
            ggml_cuda_memcpy_1<8, 2>(x, b->qs + i0 % QK8_0);
            d = __half2float(b->d);
        }
    }

    __device__ __forceinline__ void mad(float * acc, const float p) const {
#pragma unroll
        for (int l = 0; l < 8; ++l) {
            acc[l] = fmaf(p, x[l]*d, acc[l]);
        }
    }
};

template <int D, int nthreads>
static __device__ __forceinline__ void radar_combine_parts(
        const float * __restrict__ parts, const float2 * __restrict__ meta, const float * __restrict__ sinks,
        float * __restrict__ out, const int n_split, const int h);

// the merge in radar_attn_kernel (p.counters): the last block of head h to finish merges the parts of all
// of them, which saves the combine kernel's launch and its wait behind the slowest block
template <int D>
static __device__ void radar_attn_last_block(const radar_attn_params & p, const int h, const int st) {
    __shared__ bool last_sh;

    __threadfence(); // this block's part and (max, sum) are visible before it is counted
    __syncthreads();
    if (threadIdx.x == 0) {
        last_sh = atomicAdd(p.counters + (int64_t) st*p.n_hq + h, 1u) == gridDim.x - 1;
    }
    __syncthreads();
    if (!last_sh) {
        return;
    }
    __threadfence();

    const int64_t j0 = ((int64_t) st*p.n_hq + h)*gridDim.x;
    radar_combine_parts<D, RADAR_ATTN_NTHREADS>(p.dst_parts + j0*D, p.dst_meta + j0, p.sinks,
        (float *) (p.dst + h*p.nb1 + st*p.nb3), gridDim.x, h);
}

template <int D, ggml_type type_K, ggml_type type_V>
__launch_bounds__(RADAR_ATTN_NTHREADS)
static __global__ void radar_attn_kernel(const radar_attn_params p) {
    constexpr int nthreads = RADAR_ATTN_NTHREADS;
    constexpr int tile     = RADAR_ATTN_TILE;

    typedef radar_k_row<type_K, D, radar_k_lanes<type_K, D>()> k_row;
    typedef radar_v_row<type_V> v_row;

    constexpr int TK = radar_k_lanes<type_K, D>(); // lanes per K row
    constexpr int RK = nthreads/TK;                // K rows per step
    constexpr int NK = tile/RK;                    // K rows per thread and tile
    constexpr int BK = radar_k_lane_bytes<type_K, D>() > 16 ? (NK < 4 ? NK : 4) : (NK < 8 ? NK : 8); // K rows per batch of loads
    constexpr int VE = v_row::ne;
    constexpr int TV = D/VE;                       // threads per V row
    constexpr int RV = nthreads/TV;                // V rows per step
    constexpr int NV = tile/RV;                    // V rows per thread and tile
    constexpr int BV = NV < 8 ? NV : 8;            // V rows per batch of loads
    static_assert(NK % BK == 0 && NV % BV == 0 && RV >= 1 && tile % WARP_SIZE == 0, "bad tiling");

    const int split = blockIdx.x;
    const int h     = blockIdx.y;
    const int st    = blockIdx.z;
    const int hk    = h/p.gqa;
    const int tid   = threadIdx.x;
    const int lane  = tid % WARP_SIZE;
    const int il    = tid % TK;
    const int rk    = tid / TK;
    const int iv    = tid % TV;
    const int rv    = tid / TV;

    __shared__ __align__(16) char q_sh[radar_q_nbytes<type_K, D>()];
    __shared__ int   cells_sh[tile]; // cell of each tile row, -1: none or masked
    __shared__ float kq_sh[tile];
    __shared__ float vkq_sh[RV][D];

    extern __shared__ uint32_t keys_sh[]; // with p.select_in_attn: [n_seg_cap], with two stages [n_rescore]
    __shared__ int sel_sh[RADAR_ATTN_SEL_MAX];

    const radar_counts cnt = radar_get_counts(p, st);

    // kept segments: the list of radar_select, the top-k picked below (p.select_in_attn), or all of them
    const int * sel   = nullptr;
    int         n_sel = cnt.n_seg;
    const bool  pick  = p.select_in_attn && cnt.n_cand > p.top_k;
    if (pick) {
        sel   = sel_sh;
        n_sel = p.top_k + (cnt.n_seg - cnt.n_cand);
    } else if (p.sel) {
        const int item = p.shared ? st*p.n_hkv + hk : st*p.n_hq + h;
        sel   = p.sel + (int64_t) item*(p.n_seg_cap + 1);
        n_sel = sel[0];
        sel  += 1;
    }

    // attended cells, in this order: sinks [0, sink_end), kept segments, tail [tail0, n_kv)
    const int sink_end = min(p.n_sink, cnt.n_seg*p.L);
    const int n_segc   = n_sel*p.L;
    const int tail0    = cnt.n_seg*p.L;
    const int n_att    = sink_end + n_segc + (p.n_kv - tail0);

    if (gridDim.x > 1 && split*tile >= n_att) {
        if (tid == 0) {
            p.dst_meta[((int64_t) st*p.n_hq + h)*gridDim.x + split] = make_float2(-INFINITY, 0.0f); // skipped by the combine
        }
        if (p.counters) {
            radar_attn_last_block<D>(p, h, st);
        }
        return;
    }

    if (pick) {
        // every block of the head picks the same top-k from the scores: redundant but cheap (a few KB from L2),
        // and it saves the dependent launch of radar_select between the score kernel and this one. With two
        // stages the inputs are the rescored candidates of stage 1 (p.exact in the order of p.cand, whose
        // lists are ascending: ties still go to the lower segment), mapped to their segments after.
        const int     item = st*p.n_hq + h;
        const bool    two  = p.n_rescore > 0;
        const int     n_in = two ? min(p.n_rescore, cnt.n_cand) : cnt.n_cand; // > top_k
        const float * sc   = two ? p.exact + (int64_t) item*p.n_rescore : p.scores + (int64_t) item*p.n_seg_cap;
        radar_scores_to_keys<nthreads>(sc, keys_sh, n_in, tid);
        __syncthreads();
        if (p.top_k > 0) {
            radar_top_k_hist<nthreads>(keys_sh, n_in, p.top_k, sel_sh);
        }
        if (two) {
            __syncthreads();
            const int * cand = p.cand + (int64_t) item*(p.n_rescore + 1) + 1;
            for (int i = tid; i < p.top_k; i += nthreads) {
                sel_sh[i] = cand[sel_sh[i]];
            }
        }
        for (int i = tid; i < cnt.n_seg - cnt.n_cand; i += nthreads) {
            sel_sh[p.top_k + i] = cnt.n_cand + i; // the recent segments
        }
        // (the barrier before the tile loop makes sel_sh visible)
    }

    radar_load_q<type_K, D>((const float *) (p.q + h*p.nbq2 + st*p.nbq3), q_sh);

    const float slope = get_alibi_slope(p.max_bias, h, p.n_head_log2, p.m0, p.m1);

    const char * K    = p.k    + hk*p.nbk2 + st*p.nbk3;
    const char * V    = p.v    + hk*p.nbv2 + st*p.nbv3;
    const char * mrow = p.mask + st*p.nbm3;

    float M = -INFINITY;
    float S = 0.0f;
    float acc[VE];
#pragma unroll
    for (int e = 0; e < VE; ++e) {
        acc[e] = 0.0f;
    }

    __syncthreads();

    for (int t0 = split*tile; t0 < n_att; t0 += gridDim.x*tile) {
        // the mask value is loaded here but only read after the K rows: the two loads overlap. A masked
        // cell has its K and V rows read for nothing (holes and padding only) and gets weight 0.
        float mv = -INFINITY;
        if (tid < tile) {
            int j = t0 + tid;
            int c = -1;
            if (j < n_att) {
                if (j < sink_end) {
                    c = j;
                } else if ((j -= sink_end) < n_segc) {
                    c = sel ? sel[j/p.L]*p.L + j % p.L : j;
                    c = c < sink_end ? -1 : c; // attended as a sink already
                } else {
                    c = tail0 + (j - n_segc);
                }
            }
            if (c >= 0) {
                mv = radar_mask_value(mrow, c, p.mask_f16);
            }
            cells_sh[tid] = c;
        }
        __syncthreads();

        // logits, TK lanes per K row
#pragma unroll
        for (int i0 = 0; i0 < NK; i0 += BK) {
            k_row kr[BK];
#pragma unroll
            for (int i = 0; i < BK; ++i) {
                const int c = cells_sh[(i0 + i)*RK + rk];
                kr[i].load(K + (int64_t) max(c, 0)*p.nbk1, il, c >= 0);
            }
#pragma unroll
            for (int i = 0; i < BK; ++i) {
                const int r = (i0 + i)*RK + rk;
                float x = kr[i].dot(q_sh, il);
                if (il == 0) {
                    x *= p.kq_scale;
                    if (p.softcap != 0.0f) {
                        x = p.softcap*tanhf(x);
                    }
                    kq_sh[r] = x;
                }
            }
        }
        __syncthreads();
        if (tid < tile) {
            // -inf for a cell outside the list or masked
            kq_sh[tid] = cells_sh[tid] >= 0 && mv != -INFINITY ? kq_sh[tid] + slope*mv : -INFINITY;
        }
        __syncthreads();

        // online softmax; every warp reduces the whole tile (same values, same order, same result)
        float tmax = -INFINITY;
#pragma unroll
        for (int r = lane; r < tile; r += WARP_SIZE) {
            tmax = fmaxf(tmax, kq_sh[r]);
        }
        tmax = warp_reduce_max(tmax);
        const float M_new = fmaxf(M, tmax);

        if (M_new != -INFINITY) {
            float tsum = 0.0f;
#pragma unroll
            for (int r = lane; r < tile; r += WARP_SIZE) {
                tsum += expf(kq_sh[r] - M_new);
            }
            tsum = warp_reduce_sum(tsum);

            const float ms = expf(M - M_new);
            S = S*ms + tsum;
            M = M_new;
#pragma unroll
            for (int e = 0; e < VE; ++e) {
                acc[e] *= ms;
            }

            // VKQ, TV threads per V row
#pragma unroll
            for (int i0 = 0; i0 < NV; i0 += BV) {
                v_row vr[BV];
#pragma unroll
                for (int i = 0; i < BV; ++i) {
                    const int c = cells_sh[(i0 + i)*RV + rv];
                    vr[i].load(V + (int64_t) max(c, 0)*p.nbv1, iv*VE, c >= 0);
                }
#pragma unroll
                for (int i = 0; i < BV; ++i) {
                    vr[i].mad(acc, expf(kq_sh[(i0 + i)*RV + rv] - M));
                }
            }
        }
        __syncthreads();
    }

#pragma unroll
    for (int e = 0; e < VE; ++e) {
        vkq_sh[rv][iv*VE + e] = acc[e];
    }
    __syncthreads();

    if (gridDim.x == 1) {
        const float scl = radar_out_scale(M, S, p.sinks, h);
        float * out = (float *) (p.dst + h*p.nb1 + st*p.nb3);
        for (int d = tid; d < D; d += nthreads) {
            float sum = 0.0f;
#pragma unroll
            for (int r = 0; r < RV; ++r) {
                sum += vkq_sh[r][d];
            }
            out[d] = sum*scl;
        }
    } else {
        const int64_t j = ((int64_t) st*p.n_hq + h)*gridDim.x + split;
        float * out = p.dst_parts + j*D;
        for (int d = tid; d < D; d += nthreads) {
            float sum = 0.0f;
#pragma unroll
            for (int r = 0; r < RV; ++r) {
                sum += vkq_sh[r][d];
            }
            out[d] = sum;
        }
        if (tid == 0) {
            p.dst_meta[j] = make_float2(M, S);
        }
        if (p.counters) {
            radar_attn_last_block<D>(p, h, st);
        }
    }
}

// log-sum-exp merge of the n_split blocks of one head into out[0, D) (cf. flash_attn_combine_results).
// The (max, sum) pairs go through shared memory first, so that their loads overlap instead of waiting on
// each other. Loads bypass L1: in the combine of radar_attn_kernel the parts come from other blocks.
template <int D, int nthreads>
static __device__ __forceinline__ void radar_combine_parts(
        const float * __restrict__ parts, const float2 * __restrict__ meta, const float * __restrict__ sinks,
        float * __restrict__ out, const int n_split, const int h) {
    __shared__ float w_sh[RADAR_ATTN_MAX_SPLIT]; // weight of each block, exp(max_l - M), 0 if it attended nothing
    __shared__ float red_sh[nthreads/WARP_SIZE];

    const int tid = threadIdx.x;

    float2 ml = make_float2(-INFINITY, 0.0f);
    float  mx = -INFINITY;
    for (int l = tid; l < n_split; l += nthreads) {
        ml = __ldcg(meta + l);
        mx = fmaxf(mx, ml.x);
    }
    mx = warp_reduce_max(mx);
    if (tid % WARP_SIZE == 0) {
        red_sh[tid/WARP_SIZE] = mx;
    }
    __syncthreads();
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < nthreads/WARP_SIZE; ++w) {
        M = fmaxf(M, red_sh[w]);
    }
    __syncthreads();

    float s = 0.0f;
    for (int l = tid; l < n_split; l += nthreads) {
        // a block that attended nothing has max -inf and may have left its VKQ part unwritten
        const float2 m2 = n_split <= nthreads ? ml : __ldcg(meta + l);
        const float  f  = m2.x == -INFINITY || M == -INFINITY ? 0.0f : expf(m2.x - M);
        w_sh[l] = f;
        s += f*m2.y;
    }
    s = warp_reduce_sum(s);
    if (tid % WARP_SIZE == 0) {
        red_sh[tid/WARP_SIZE] = s;
    }
    __syncthreads();
    float S = 0.0f;
#pragma unroll
    for (int w = 0; w < nthreads/WARP_SIZE; ++w) {
        S += red_sh[w];
    }

    const float scl = radar_out_scale(M, S, sinks, h);
    for (int d = tid; d < D; d += nthreads) {
        float num = 0.0f;
#pragma unroll 8
        for (int l = 0; l < n_split; ++l) {
            const float f = w_sh[l];
            num += f != 0.0f ? f*__ldcg(parts + l*D + d) : 0.0f;
        }
        out[d] = num*scl;
    }
}

// the merge as its own kernel (p.counters == NULL), one thread per output
template <int D>
__launch_bounds__(D)
static __global__ void radar_attn_combine(
        const float * __restrict__ parts, const float2 * __restrict__ meta, const float * __restrict__ sinks,
        char * __restrict__ dst, const int n_split, const int n_hq, const int64_t nb1, const int64_t nb3) {
    const int h  = blockIdx.x;
    const int st = blockIdx.y;

    const int64_t j = (int64_t) st*n_hq + h;
    radar_combine_parts<D, D>(parts + j*n_split*D, meta + j*n_split, sinks, (float *) (dst + h*nb1 + st*nb3), n_split, h);
}

template <int D, ggml_type type_K, ggml_type type_V>
static void radar_attn_launch_KV(const radar_attn_params & p, const dim3 grid, cudaStream_t stream) {
    const size_t smem = p.select_in_attn ? (p.n_rescore > 0 ? p.n_rescore : p.n_seg_cap)*sizeof(uint32_t) : 0;
    radar_attn_kernel<D, type_K, type_V><<<grid, RADAR_ATTN_NTHREADS, smem, stream>>>(p);
}

template <int D, ggml_type type_K>
static void radar_attn_launch_K(const ggml_type type_V, const radar_attn_params & p, const dim3 grid, cudaStream_t stream) {
    switch (type_V) {
        case GGML_TYPE_F32:  radar_attn_launch_KV<D, type_K, GGML_TYPE_F32> (p, grid, stream); break;
        case GGML_TYPE_F16:  radar_attn_launch_KV<D, type_K, GGML_TYPE_F16> (p, grid, stream); break;
        case GGML_TYPE_Q8_0: radar_attn_launch_KV<D, type_K, GGML_TYPE_Q8_0>(p, grid, stream); break;
        default: GGML_ABORT("fatal error");
    }
}

template <int D>
static void radar_attn_launch_D(const ggml_type type_K, const ggml_type type_V, const radar_attn_params & p,
        const int n_split, const int ns, cudaStream_t stream) {
    const dim3 grid(n_split, p.n_hq, ns);
    switch (type_K) {
        case GGML_TYPE_F32:  radar_attn_launch_K<D, GGML_TYPE_F32> (type_V, p, grid, stream); break;
        case GGML_TYPE_F16:  radar_attn_launch_K<D, GGML_TYPE_F16> (type_V, p, grid, stream); break;
        case GGML_TYPE_Q8_0: radar_attn_launch_K<D, GGML_TYPE_Q8_0>(type_V, p, grid, stream); break;
        default: GGML_ABORT("fatal error");
    }

    if (n_split > 1 && !p.counters) {
        radar_attn_combine<D><<<dim3(p.n_hq, ns), D, 0, stream>>>(
            p.dst_parts, p.dst_meta, p.sinks, p.dst, n_split, p.n_hq, p.nb1, p.nb3);
    }
}

void radar_attn_launch(const int D, const ggml_type type_K, const ggml_type type_V, const radar_attn_params & p,
        const int n_split, const int ns, cudaStream_t stream) {
    switch (D) {
        case  64: radar_attn_launch_D< 64>(type_K, type_V, p, n_split, ns, stream); break;
        case 128: radar_attn_launch_D<128>(type_K, type_V, p, n_split, ns, stream); break;
        case 256: radar_attn_launch_D<256>(type_K, type_V, p, n_split, ns, stream); break;
        default: GGML_ABORT("fatal error");
    }
}

#endif // RADAR_CUDA_AVAILABLE
