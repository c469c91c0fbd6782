// Radar sparse decode attention: what the kernel files radar-*.cu share (parameters, loads of K rows and
// queries in each K type, summary values, top-k keys) and the launchers of each kernel family.
// The semantics are those of the CPU kernels in ggml-cpu/radar.cpp.
#pragma once

#include "common.cuh"

#include <cstdint>

// the kernels assume 32-wide warps (q8_0 blocks, ballots); on HIP and MUSA the ops are not supported
#if !defined(GGML_USE_HIP) && !defined(GGML_USE_MUSA)
#define RADAR_CUDA_AVAILABLE
#endif // !defined(GGML_USE_HIP) && !defined(GGML_USE_MUSA)

#ifdef RADAR_CUDA_AVAILABLE

#define RADAR_D_MAX                256
#define RADAR_ATTN_NTHREADS        128
#define RADAR_ATTN_TILE             64 // cells per tile of the attention kernel
#define RADAR_ATTN_BLOCKS_PER_SM     8 // target of the split over blocks
#define RADAR_ATTN_MAX_SPLIT       256
#define RADAR_SCORE_NTHREADS       128
#define RADAR_SCORE_SEGS             8 // segments per block of radar_score_rf (2 per warp: short dependency chains)
#define RADAR_ORACLE_SEGS            8 // segments per block of radar_score_oracle
#define RADAR_RESCORE_NTHREADS     128 // threads of radar_rescore, one block per candidate and query head
#define RADAR_SELECT_NTHREADS      256
#define RADAR_SELECT_SMEM_MAX    32768 // bytes of dynamic shared memory for the keys of radar_select
#define RADAR_MASS_MAX_CAND       2048 // candidates of stage two with a mass target (sorted in shared memory)
#define RADAR_MASS_RANK_MAX        256 // up to this many: ranked by counting (one barrier), else a bitonic sort
#define RADAR_SELECT_SMALL_K        32 // top-k up to this: radar_top_k_hist, which radar_attn_kernel runs itself
#define RADAR_SELECT_BINS_LOG2      10 // bins of radar_top_k_threshold: 10 bits of the key per pass
#define RADAR_ATTN_SEL_MAX          64 // kept segments (top-k + recent) up to this: radar_attn_kernel selects itself
                                       // (with two stages: the top-k of the rescored candidates)
#define RADAR_SUM_NTHREADS         256
#define RADAR_RF_TILE                8 // keys per tile of radar_summarize_rf

static_assert(QK8_0 == WARP_SIZE, "radar: the query is quantized to q8_0 one warp per block");

struct radar_attn_params {
    const char  * q;         // [D, 1, n_hq, ns] f32
    const char  * k;         // [D, n_kv, n_hkv, ns]
    const char  * v;         // [D, n_kv, n_hkv, ns]
    const char  * mask;      // [n_kv, >= 1, 1, ns] f16/f32, row 0
    const char  * s;         // [W, n_hkv, n_seg_cap, ns] f32 or f16 summaries
    const char  * info;      // [2, ns] i32, info[0] = number of summarized segments
    const char  * omega;     // [D, m] f32 or NULL
    const float * sinks;     // [n_hq] or NULL

    float  * lq;             // [2m, n_hq, ns] log features of the queries (RF)
    float  * scores;         // [n_seg_cap, n_hq, ns] segment scores per query head (UNION: MEANVAR's)
    float  * scores_b;       // [n_seg_cap, n_hq, ns] UNION: MINMAX's segment scores; else NULL
    float  * comb;           // [n_seg_cap, n_hkv, ns] group scores (shared selection; UNION: MEANVAR's)
    float  * comb_b;         // [n_seg_cap, n_hkv, ns] UNION: MINMAX's group scores (shared selection); else NULL
    int    * sel;            // [1 + n_seg_cap, n_sel_items, ns] number of kept segments, then their ids
    int    * cand;           // [1 + n_rescore, n_sel_items, ns] rescore: number of candidates of stage 1, then their ids
    float  * exact;          // [n_rescore, n_hq, ns] rescore: exact score of each candidate of stage 1 per query head
    float  * always;         // [n_hq, ns] mass target: log mass of the always-attended cells (the sink logit not included)
    float  * cpart;          // [D, n_rescore + 1, n_hq, ns] mass target: attention output over the cells of each
                             // candidate of stage 1, then over the always-attended cells (normalized within each)
    float  * dst_parts;      // [D, n_split, n_hq, ns] unnormalized VKQ of each block
    float2 * dst_meta;       // [n_split, n_hq, ns] (max, sum) of each block
    char   * dst;            // [D, n_hq, 1, ns] f32

    int64_t nbq2, nbq3;
    int64_t nbk1, nbk2, nbk3;
    int64_t nbv1, nbv2, nbv3;
    int64_t nbm3;
    int64_t nbs1, nbs2, nbs3;
    int64_t nbi1;
    int64_t nbo1;
    int64_t nb1, nb3;

    int n_kv, n_hq, n_hkv, gqa, n_seg_cap, W, m;
    int L, top_k, n_sink, n_recent;
    int n_rescore;           // two-stage selection: candidates of stage 1, min(op param 9, segments); 0: one stage
    float mass;              // mass target of stage two (op param 10); 0: keep top_k
    bool merge;              // mass target: radar_select_mass merges the outputs radar_rescore wrote (p.cpart)
    int rescore_heads;       // query heads per block of radar_rescore (1, 4 or 8)
    int score;
    bool shared, mask_f16;
    bool s_f16;              // summaries stored as half
    bool select_smem;        // radar_select keeps its keys in dynamic shared memory
    bool select_in_attn;     // radar_attn_kernel picks the top-k itself (per-head selection, small top_k): from the
                             // scores (one stage, no radar_select), or from p.exact (two stages, no second radar_select)
    unsigned int * counters; // [n_hq, ns] blocks of a head done, for the combine in radar_attn_kernel; or NULL
                             // (then radar_attn_combine runs). Zeroed by radar_score_summary_gqa, which runs before.
    float scale, kq_scale, softcap, max_bias, m0, m1;
    uint32_t n_head_log2;
};

struct radar_summarize_params {
    const char * k;          // [D, n_hkv, n_kv, ns]
    const char * mask;       // [n_kv, n_rows, 1, ns] f16/f32, the last row tells which cells are valid
    const char * ids;        // [n_upd, ns] i32
    const char * omega;      // [D, m] f32 or NULL
    char       * s;          // [W, n_hkv, n_seg_cap, ns] f32 or f16

    int64_t nbk1, nbk2, nbk3;
    int64_t nbm_row, nbm3;   // offset of the last mask row, stream stride
    int64_t nbi0, nbi1;
    int64_t nbo1;
    int64_t nbs1, nbs2, nbs3;

    int D, n_kv, n_seg_cap, m, L;
    int score;
    bool mask_f16;
    bool s_f16;              // summaries stored as half
    float scale;
};

// segments of a stream: [0, n_cand) are candidates, [n_cand, n_seg) the recent ones (always kept)
struct radar_counts {
    int n_seg;
    int n_cand;
};

static __device__ __forceinline__ radar_counts radar_get_counts(const radar_attn_params & p, const int st) {
    const int n_seg_in = *(const int *) (p.info + st*p.nbi1);
    const int n_seg    = max(0, min(n_seg_in, min(p.n_kv/p.L, p.n_seg_cap)));
    const int n_force  = (int) min((int64_t) n_seg, ((int64_t) p.n_recent + p.L - 1)/p.L);
    return { n_seg, n_seg - n_force };
}

static __device__ __forceinline__ float radar_mask_value(const char * mrow, const int64_t c, const bool mask_f16) {
    return mask_f16 ? __half2float(((const half *) mrow)[c]) : ((const float *) mrow)[c];
}

// summary values are stored as Ts (float or half); f16 saturates at +-65504 like the CPU kernel
template <typename Ts>
static __device__ __forceinline__ float radar_s_load(const Ts * row, const int i) {
    if constexpr (std::is_same_v<Ts, half>) {
        return __half2float(row[i]);
    } else {
        return row[i];
    }
}

template <typename Ts>
static __device__ __forceinline__ void radar_s_store(Ts * row, const int i, const float x) {
    if constexpr (std::is_same_v<Ts, half>) {
        row[i] = __float2half(isnan(x) ? x : fminf(fmaxf(x, -65504.0f), 65504.0f));
    } else {
        row[i] = x;
    }
}

// lanes that share one K row in a KQ dot: a lane takes 16 bytes (F32, F16) or 4 quants (Q8_0) per step
template <ggml_type type_K, int D>
static constexpr __host__ __device__ int radar_k_lanes() {
    return type_K == GGML_TYPE_F16 ? (D/8 < WARP_SIZE ? D/8 : WARP_SIZE) : (D/4 < WARP_SIZE ? D/4 : WARP_SIZE);
}

// the query in K's vec-dot type, as the CPU converts it: F32 as is, F16 rounded, Q8_0 quantized
template <ggml_type type_K, int D>
static constexpr __host__ __device__ int radar_q_nbytes() {
    return type_K == GGML_TYPE_F32 ? 4*D : type_K == GGML_TYPE_F16 ? 2*D : D + 4*(D/QK8_0);
}

// bytes of one K row per lane of radar_k_lanes
template <ggml_type type_K, int D>
static constexpr __host__ __device__ int radar_k_lane_bytes() {
    return (type_K == GGML_TYPE_F32 ? 4*D : type_K == GGML_TYPE_F16 ? 2*D : D)/radar_k_lanes<type_K, D>();
}

// all threads of the block; the caller syncs
template <ggml_type type_K, int D>
static __device__ __forceinline__ void radar_load_q(const float * __restrict__ q, char * __restrict__ q_sh) {
    if constexpr (type_K == GGML_TYPE_F32) {
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            ((float *) q_sh)[i] = q[i];
        }
    } else if constexpr (type_K == GGML_TYPE_F16) {
        for (int i = threadIdx.x; i < D; i += blockDim.x) {
            ((half *) q_sh)[i] = __float2half(q[i]);
        }
    } else {
        static_assert(type_K == GGML_TYPE_Q8_0, "bad type");
        // quantize_row_q8_0_ref: one warp per block of 32
        int8_t * qs = (int8_t *) q_sh;
        float  * qd = (float *) (q_sh + D);
        const int lane = threadIdx.x % WARP_SIZE;
        for (int ib = threadIdx.x/WARP_SIZE; ib < D/QK8_0; ib += blockDim.x/WARP_SIZE) {
            const float x    = q[ib*QK8_0 + lane];
            const float amax = warp_reduce_max(fabsf(x));
            const float d    = __fdiv_rn(amax, 127.0f);                  // exact divisions, also with fast math
            const float id   = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
            qs[ib*QK8_0 + lane] = (int8_t) roundf(x*id);
            if (lane == 0) {
                qd[ib] = __half2float(__float2half(d));
            }
        }
    }
}

// one K row held by TK lanes: load() may be predicated off (zeros), dot() has to be called by the whole warp
template <ggml_type type_K, int D, int TK>
struct radar_k_row;

template <int D, int TK>
struct radar_k_row<GGML_TYPE_F32, D, TK> {
    static constexpr int nu = D/(4*TK);
    float4 x[nu];

    __device__ __forceinline__ void load(const char * row, const int il, const bool valid) {
#pragma unroll
        for (int u = 0; u < nu; ++u) {
            x[u] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (valid) {
                ggml_cuda_memcpy_1<16>(&x[u], row + 16*(u*TK + il));
            }
        }
    }

    __device__ __forceinline__ float dot(const char * q_sh, const int il) const {
        float sum = 0.0f;
#pragma unroll
        for (int u = 0; u < nu; ++u) {
            const float4 q = ((const float4 *) q_sh)[u*TK + il];
            sum = fmaf(x[u].x, q.x, sum);
            sum = fmaf(x[u].y, q.y, sum);
            sum = fmaf(x[u].z, q.z, sum);
            sum = fmaf(x[u].w, q.w, sum);
        }
        return warp_reduce_sum<TK>(sum);
    }
};

template <int D, int TK>
struct radar_k_row<GGML_TYPE_F16, D, TK> {
    static constexpr int nu = D/(8*TK);
    __align__(16) half2 x[nu][4];

    __device__ __forceinline__ void load(const char * row, const int il, const bool valid) {
#pragma unroll
        for (int u = 0; u < nu; ++u) {
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                x[u][l] = make_half2(0.0f, 0.0f);
            }
            if (valid) {
                ggml_cuda_memcpy_1<16>(x[u], row + 16*(u*TK + il));
            }
        }
    }

    __device__ __forceinline__ float dot(const char * q_sh, const int il) const {
        float sum = 0.0f;
#pragma unroll
        for (int u = 0; u < nu; ++u) {
            const half2 * q2 = (const half2 *) q_sh + 4*(u*TK + il);
#pragma unroll
            for (int l = 0; l < 4; ++l) {
                const float2 kf = __half22float2(x[u][l]);
                const float2 qf = __half22float2(q2[l]);
                sum = fmaf(kf.x, qf.x, sum);
                sum = fmaf(kf.y, qf.y, sum);
            }
        }
        return warp_reduce_sum<TK>(sum);
    }
};

template <int D, int TK>
struct radar_k_row<GGML_TYPE_Q8_0, D, TK> {
    static_assert(TK % (QK8_0/4) == 0, "bad TK");
    static constexpr int nu = D/(4*TK);
    int   x[nu]; // 4 quants
    float d[nu];

    __device__ __forceinline__ void load(const char * row, const int il, const bool valid) {
#pragma unroll
        for (int u = 0; u < nu; ++u) {
            const int i = u*TK + il;
            const block_q8_0 * b = (const block_q8_0 *) row + i/(QK8_0/4);
            x[u] = 0;
            d[u] = 0.0f;
            if (valid) {
                ggml_cuda_memcpy_1<4, 2>(&x[u], b->qs + 4*(i % (QK8_0/4)));
                d[u] = __half2float(b->d);
            }
        }
    }

    // like ggml_vec_dot_q8_0_q8_0: integer sum per block of 32, then times both scales
    __device__ __forceinline__ float dot(const char * q_sh, const int il) const {
        const int   * qi = (const int   *) q_sh;
        const float * qd = (const float *) (q_sh + D);
        float sum = 0.0f;
#pragma unroll
        for (int u = 0; u < nu; ++u) {
            const int i = u*TK + il;
            int sumi = ggml_cuda_dp4a(x[u], qi[i], 0);
#pragma unroll
            for (int offset = QK8_0/8; offset > 0; offset >>= 1) {
                sumi += __shfl_xor_sync(0xFFFFFFFF, sumi, offset, WARP_SIZE);
            }
            if (i % (QK8_0/4) == 0) {
                sum += sumi*(d[u]*qd[i/(QK8_0/4)]);
            }
        }
        return warp_reduce_sum<TK>(sum);
    }
};

// E consecutive values of one V row per lane (E = D/radar_k_lanes: 4 or 8), the V side of radar_k_row for
// radar_rescore with the values; load() may be predicated off (zeros)
template <ggml_type type_V, int E>
struct radar_v_slice;

template <int E>
struct radar_v_slice<GGML_TYPE_F32, E> {
    static_assert(E % 4 == 0, "bad E");
    __align__(16) float x[E];

    __device__ __forceinline__ void load(const char * row, const int i0, const bool valid) {
#pragma unroll
        for (int l = 0; l < E; l += 4) {
            x[l + 0] = x[l + 1] = x[l + 2] = x[l + 3] = 0.0f;
            if (valid) {
                ggml_cuda_memcpy_1<16>(x + l, (const float *) row + i0 + l);
            }
        }
    }

    __device__ __forceinline__ void mad(float * acc, const float w) const {
#pragma unroll
        for (int e = 0; e < E; ++e) {
            acc[e] = fmaf(w, x[e], acc[e]);
        }
    }
};

template <int E>
struct radar_v_slice<GGML_TYPE_F16, E> {
    static_assert(E == 4 || E == 8, "bad E");
    __align__(16) half2 x[E/2];

    __device__ __forceinline__ void load(const char * row, const int i0, const bool valid) {
#pragma unroll
        for (int l = 0; l < E/2; ++l) {
            x[l] = make_half2(0.0f, 0.0f);
        }
        if (valid) {
            ggml_cuda_memcpy_1<2*E>(x, (const half *) row + i0);
        }
    }

    __device__ __forceinline__ void mad(float * acc, const float w) const {
#pragma unroll
        for (int l = 0; l < E/2; ++l) {
            const float2 f = __half22float2(x[l]);
            acc[2*l + 0] = fmaf(w, f.x, acc[2*l + 0]);
            acc[2*l + 1] = fmaf(w, f.y, acc[2*l + 1]);
        }
    }
};

template <int E>
struct radar_v_slice<GGML_TYPE_Q8_0, E> {
    static_assert(QK8_0 % E == 0, "bad E");
    __align__(8) int8_t x[E];
    float d;

    __device__ __forceinline__ void load(const char * row, const int i0, const bool valid) {
        const block_q8_0 * b = (const block_q8_0 *) row + i0/QK8_0;
#pragma unroll
        for (int l = 0; l < E; ++l) {
            x[l] = 0;
        }
        d = 0.0f;
        if (valid) {
            ggml_cuda_memcpy_1<E, 2>(x, b->qs + i0 % QK8_0);
            d = __half2float(b->d);
        }
    }

    __device__ __forceinline__ void mad(float * acc, const float w) const {
        const float wd = w*d;
#pragma unroll
        for (int e = 0; e < E; ++e) {
            acc[e] = fmaf(wd, (float) x[e], acc[e]);
        }
    }
};

// VKQ/S with the sink logit in the denominator only; zeros when no cell was attended
static __device__ __forceinline__ float radar_out_scale(const float M, float S, const float * sinks, const int h) {
    float scl = 1.0f;
    if (sinks) {
        const float sv = sinks[h];
        const float M2 = fmaxf(M, sv);
        if (M2 != -INFINITY) {
            scl = expf(M - M2);
            S   = S*scl + expf(sv - M2);
        }
    }
    return S == 0.0f ? 0.0f : scl/S;
}

// top-k keys (radar_select, and radar_attn_kernel when it selects itself)

// order-preserving map of a score to 32 bits: larger score, larger key; NaN as -inf, -0 as +0
static __device__ __forceinline__ uint32_t radar_key(float x) {
    x = isnan(x) ? -INFINITY : x;
    x = x == 0.0f ? 0.0f : x;
    const uint32_t u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// keys[i] = radar_key(sc[i]) for i < n, by the nthreads threads of a block; the scores are loaded in
// batches of nb per thread so that a batch is in flight together (keys may alias sc)
template <int nthreads>
static __device__ __forceinline__ void radar_scores_to_keys(const float * sc, uint32_t * keys, const int n, const int tid) {
    constexpr int nb = 4;
    for (int i0 = 0; i0 < n; i0 += nb*nthreads) {
        float x[nb];
#pragma unroll
        for (int j = 0; j < nb; ++j) {
            const int i = i0 + j*nthreads + tid;
            x[j] = i < n ? sc[i] : 0.0f;
        }
#pragma unroll
        for (int j = 0; j < nb; ++j) {
            const int i = i0 + j*nthreads + tid;
            if (i < n) {
                keys[i] = radar_key(x[j]);
            }
        }
    }
}

// merge the online-softmax pairs (max, sum) of the lanes of a warp that hold other cells: lanes l and
// l ^ offset for offset = TK, 2 TK, ... (TK lanes share one K row)
template <int TK>
static __device__ __forceinline__ void radar_warp_merge_lse(float & mx, float & sum) {
#pragma unroll
    for (int offset = TK; offset < WARP_SIZE; offset <<= 1) {
        const float mx2  = __shfl_xor_sync(0xFFFFFFFF, mx,  offset, WARP_SIZE);
        const float sum2 = __shfl_xor_sync(0xFFFFFFFF, sum, offset, WARP_SIZE);
        const float mn   = fmaxf(mx, mx2);
        if (mn != -INFINITY) {
            sum = sum*expf(mx - mn) + sum2*expf(mx2 - mn);
            mx  = mn;
        }
    }
}


// the threshold of the top_k best of keys[0, n_cand) by (key desc, index asc), as the CPU's nth_element:
// kept are the keys > lo, and of the keys == lo the kk with the lowest indices (all of them with all_eq)
struct radar_top_k_thr {
    uint32_t lo;
    int      kk;
    bool     all_eq;
};

// radar_top_k_thr of 0 < top_k < n_cand, in a number of passes that grows neither with top_k nor with
// n_cand. Each pass is a histogram of the keys in [lo, hi], bins of 2^s keys: the bin that holds the
// top_k-th best ends the search when all of its candidates are kept (the usual case: the top of the scores
// is sparse) or when it is one key wide (then the lowest indices win among equal keys); else the next pass
// bins that bin. At most 4 passes for 32-bit keys, mostly 1 or 2 from the range of the keys, and the bins
// are narrow enough that the atomics of a pass rarely collide. Called by every thread of the block after
// the keys are visible; the result is the same in all threads.
template <int nthreads>
static __device__ __forceinline__ radar_top_k_thr radar_top_k_threshold(const uint32_t * keys, const int n_cand, const int top_k) {
    constexpr int nwarps = nthreads/WARP_SIZE;
    constexpr int nbins  = 1 << RADAR_SELECT_BINS_LOG2;
    constexpr int bpl    = nbins/WARP_SIZE; // bins of each lane of warp 0 in the scan
    static_assert(bpl == WARP_SIZE, "the skewed scan below assumes 32 bins per lane");

    const int tid  = threadIdx.x;
    const int lane = tid % WARP_SIZE;
    const int warp = tid / WARP_SIZE;

    __shared__ int      hist[nbins];
    __shared__ uint32_t red_min[nwarps];
    __shared__ uint32_t red_max[nwarps];
    __shared__ uint32_t lo_sh;
    __shared__ int      kk_sh;
    __shared__ int      done_sh;

    // the range of the keys: the first pass bins [min, max] only
    uint32_t kmin = 0xFFFFFFFFu;
    uint32_t kmax = 0;
    for (int i = tid; i < n_cand; i += nthreads) {
        kmin = min(kmin, keys[i]);
        kmax = max(kmax, keys[i]);
    }
#pragma unroll
    for (int offset = WARP_SIZE/2; offset > 0; offset >>= 1) {
        kmin = min(kmin, __shfl_xor_sync(0xFFFFFFFF, kmin, offset, WARP_SIZE));
        kmax = max(kmax, __shfl_xor_sync(0xFFFFFFFF, kmax, offset, WARP_SIZE));
    }
    if (lane == 0) {
        red_min[warp] = kmin;
        red_max[warp] = kmax;
    }
    __syncthreads();
    kmin = red_min[0];
    kmax = red_max[0];
    for (int w = 1; w < nwarps; ++w) {
        kmin = min(kmin, red_min[w]);
        kmax = max(kmax, red_max[w]);
    }

    uint32_t lo = kmin;
    uint32_t hi = kmax; // the keys binned in this pass: [lo, hi]
    int      s  = 0;    // bin width 2^s: the smallest that covers [lo, hi] with nbins bins
    while (((kmax - kmin) >> s) >= (uint32_t) nbins) {
        ++s;
    }
    int  kk = top_k; // candidates still to keep at or above lo
    bool all_eq;     // keep every key equal to the threshold (the threshold bin is kept whole)
    for (;;) {
        for (int b = tid; b < nbins; b += nthreads) {
            hist[b] = 0;
        }
        __syncthreads();
        for (int i = tid; i < n_cand; i += nthreads) {
            const uint32_t u = keys[i];
            if (u >= lo && u <= hi) {
                atomicAdd(&hist[(u - lo) >> s], 1);
            }
        }
        __syncthreads();
        if (warp == 0) {
            // lane l sums bins nbins-1 - l*bpl - t (t < bpl), the top first; read skewed: no bank conflicts
            int lsum = 0;
#pragma unroll
            for (int t = 0; t < bpl; ++t) {
                lsum += hist[nbins - 1 - lane*bpl - (t + lane) % bpl];
            }
            int incl = lsum;
#pragma unroll
            for (int offset = 1; offset < WARP_SIZE; offset <<= 1) {
                const int y = __shfl_up_sync(0xFFFFFFFF, incl, offset, WARP_SIZE);
                incl += lane >= offset ? y : 0;
            }
            // some lane reaches kk: the bins hold every candidate of the range, at least kk of them
            const uint32_t ball = __ballot_sync(0xFFFFFFFF, incl >= kk);
            if (lane == __ffs(ball) - 1) {
                int run = incl - lsum;
                for (int t = 0; t < bpl; ++t) {
                    const int b = nbins - 1 - lane*bpl - t;
                    const int c = hist[b];
                    if (run + c >= kk) {
                        lo_sh   = lo + ((uint32_t) b << s);
                        kk_sh   = kk - run;
                        done_sh = c == kk - run ? 1 : (s == 0 ? 2 : 0);
                        break;
                    }
                    run += c;
                }
            }
        }
        __syncthreads();
        lo = lo_sh;
        hi = (uint32_t) min((uint64_t) hi, (uint64_t) lo + ((1u << s) - 1)); // the bin, within the pass's range
        kk = kk_sh;
        const int done = done_sh;
        if (done) {
            all_eq = done == 1;
            break;
        }
        s = max(s - RADAR_SELECT_BINS_LOG2, 0);
    }
    return { lo, kk, all_eq };
}

// top_k <= RADAR_SELECT_SMALL_K of keys[0, n_cand) (0 < top_k < n_cand) by radar_top_k_threshold, the kept
// ones gathered by warp 0 (the usual 1024-token budget is 4-16 segments). Called by every thread of the
// block after the keys are visible; warp 0 writes out[0, top_k) in ascending index order, the caller syncs
// before reading it.
template <int nthreads>
static __device__ void radar_top_k_hist(const uint32_t * keys, const int n_cand, const int top_k, int * out) {
    const int tid  = threadIdx.x;
    const int lane = tid % WARP_SIZE;
    const int warp = tid / WARP_SIZE;

    __shared__ int n_sel_sh;
    __shared__ int sel[RADAR_SELECT_SMALL_K];

    if (tid == 0) {
        n_sel_sh = 0;
    }
    // (radar_top_k_threshold syncs before it returns)
    const radar_top_k_thr thr = radar_top_k_threshold<nthreads>(keys, n_cand, top_k);
    const uint32_t lo     = thr.lo;
    const bool     all_eq = thr.all_eq;

    // kept: key > lo, and key == lo for all (all_eq) or the lowest indices of them (warp 0 below)
    for (int i = tid; i < n_cand; i += nthreads) {
        const uint32_t u = keys[i];
        if (u > lo || (all_eq && u == lo)) {
            const int j = atomicAdd(&n_sel_sh, 1);
            if (j < RADAR_SELECT_SMALL_K) {
                sel[j] = i;
            }
        }
    }
    __syncthreads();

    if (warp == 0) {
        if (!all_eq) {
            int n = n_sel_sh;
            for (int i0 = 0; i0 < n_cand && n < top_k; i0 += WARP_SIZE) {
                const int      i    = i0 + lane;
                const bool     eq   = i < n_cand && keys[i] == lo;
                const uint32_t ball = __ballot_sync(0xFFFFFFFF, eq);
                const int      pos  = n + __popc(ball & ((1u << lane) - 1));
                if (eq && pos < top_k) {
                    sel[pos] = i;
                }
                n += __popc(ball);
            }
            __syncwarp();
        }
        // written in ascending segment order, as radar_select: the rank of each kept segment
        const int seg  = lane < top_k ? sel[lane] : INT_MAX;
        int       rank = 0;
        for (int r = 0; r < top_k; ++r) {
            rank += __shfl_sync(0xFFFFFFFF, seg, r, WARP_SIZE) < seg;
        }
        if (lane < top_k) {
            out[rank] = seg;
        }
    }
}


// launchers, one per kernel family; the stream order is summarize (own op), then score + select, then attention

// radar-summarize.cu: the summaries of the listed segments, grid (n_upd, n_hkv, ns)
void radar_summarize_launch(ggml_type type_K, const radar_summarize_params & p, dim3 grid, cudaStream_t stream);

// radar-select.cu: steps 1-3 of GGML_OP_RADAR_ATTN, only when a stream can have more than top_k candidates;
// with p.n_rescore the two-stage selection (select n_rescore, rescore them exactly, select top_k)
void radar_score_select_launch(int D, ggml_type type_K, ggml_type type_V, const radar_attn_params & p, bool score_gqa, int ns, cudaStream_t stream);

// radar-attn.cu: steps 4-5 of GGML_OP_RADAR_ATTN, n_split blocks per head
void radar_attn_launch(int D, ggml_type type_K, ggml_type type_V, const radar_attn_params & p, int n_split, int ns, cudaStream_t stream);

#endif // RADAR_CUDA_AVAILABLE
