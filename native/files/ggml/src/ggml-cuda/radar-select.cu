// Radar sparse decode attention, steps 1-3 of GGML_OP_RADAR_ATTN (one decode query per stream), launched
// only when a stream can have more than top_k candidate segments:
//   1. radar_rf_query:          (RF) log features of the queries
//   2. radar_score_summary_gqa: (MEAN, MEANVAR, MINMAX, UNION) score of each candidate segment for every
//                               query head of its KV head (UNION: two, MEANVAR's and MINMAX's);
//                               radar_score_rf: (RF) the same per query head
//      radar_score_oracle:      (ORACLE) log-sum-exp of the exact logits of each candidate segment
//   3. radar_select:            top-k per query head, or per KV head with shared selection: the threshold
//                               by histogram passes (radar_top_k_threshold), then an ordered compaction;
//                               ties to the lower segment index; writes the kept segments (candidates, then
//                               the recent ones) as an ascending list. UNION: the best half by MEANVAR's
//                               scores, then the best others by MINMAX's. With per-head selection and a small
//                               top_k this step runs inside radar_attn_kernel instead (radar-attn.cu; not UNION)
//      with p.n_rescore (two-stage selection), instead:
//      radar_select:            the n_rescore best candidates by score, as above, into p.cand
//      radar_rescore:           exact score of each of them per query head: log-sum-exp of the logits of
//                               its valid cells past the sinks (one block per candidate and query head)
//      radar_select:            top-k of those by exact score (shared: by the group's summed attention
//                               share over its candidates), then the recent segments, into p.sel; with
//                               per-head selection and a small top_k inside radar_attn_kernel instead
//      with a mass target (p.mass), instead of the last select and the attention (radar-attn.cu):
//      radar_rescore:           also the attention output over each candidate's cells, and over the cells
//                               always attended (sinks, recent segments, tail), into p.cpart
//      radar_select_mass:       the candidates by attention share until the target, merged into dst
#include "radar-common.cuh"

#ifdef RADAR_CUDA_AVAILABLE

// RF: f_j(x) = +-omega_j.x - |x|^2/2 of x = q*sqrt(scale); one warp per feature
__launch_bounds__(RADAR_SCORE_NTHREADS)
static __global__ void radar_rf_query(const radar_attn_params p, const int D) {
    constexpr int nwarps = RADAR_SCORE_NTHREADS/WARP_SIZE;

    const int h    = blockIdx.x;
    const int st   = blockIdx.y;
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;

    const radar_counts cnt = radar_get_counts(p, st);
    if (cnt.n_cand <= p.top_k) {
        return; // no scores needed
    }

    const float * qf = (const float *) (p.q + h*p.nbq2 + st*p.nbq3);

    float nx2 = 0.0f;
    for (int d = lane; d < D; d += WARP_SIZE) {
        nx2 += qf[d]*qf[d];
    }
    nx2 = warp_reduce_sum(nx2);

    const float half_nx2 = 0.5f*nx2*p.scale;
    const float xs       = sqrtf(p.scale);

    float * lq = p.lq + ((int64_t) st*p.n_hq + h)*2*p.m;
    for (int j = warp; j < p.m; j += nwarps) {
        const float * w = (const float *) (p.omega + j*p.nbo1);
        float wx = 0.0f;
        for (int d = lane; d < D; d += WARP_SIZE) {
            wx += w[d]*qf[d];
        }
        wx = warp_reduce_sum(wx);
        if (lane == 0) {
            lq[j]       =  wx*xs - half_nx2;
            lq[j + p.m] = -wx*xs - half_nx2;
        }
    }
}

// RF: log-sum-exp over the features of the query's and the segment's feature logs; one warp per segment
template <typename Ts>
__launch_bounds__(RADAR_SCORE_NTHREADS)
static __global__ void radar_score_rf(const radar_attn_params p) {
    constexpr int nwarps = RADAR_SCORE_NTHREADS/WARP_SIZE;

    const int h    = blockIdx.y;
    const int st   = blockIdx.z;
    const int hk   = h/p.gqa;
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;

    const radar_counts cnt = radar_get_counts(p, st);
    if (cnt.n_cand <= p.top_k) {
        return; // every candidate is kept
    }
    const int sg0 = blockIdx.x*RADAR_SCORE_SEGS;
    const int sg1 = min(sg0 + RADAR_SCORE_SEGS, cnt.n_cand);

    const float * lq  = p.lq + ((int64_t) st*p.n_hq + h)*2*p.m;
    float       * out = p.scores + ((int64_t) st*p.n_hq + h)*p.n_seg_cap;

    for (int sg = sg0 + warp; sg < sg1; sg += nwarps) {
        const Ts * row = (const Ts *) (p.s + hk*p.nbs1 + sg*p.nbs2 + st*p.nbs3);

        float mx = -INFINITY;
        for (int j = lane; j < 2*p.m; j += WARP_SIZE) {
            mx = fmaxf(mx, lq[j] + radar_s_load(row, j));
        }
        mx = warp_reduce_max(mx);
        float sum = 0.0f;
        if (mx != -INFINITY) {
            for (int j = lane; j < 2*p.m; j += WARP_SIZE) {
                sum += expf(lq[j] + radar_s_load(row, j) - mx);
            }
        }
        sum = warp_reduce_sum(sum);
        float r = mx != -INFINITY ? mx + logf(sum) : -INFINITY;
        if (!(radar_s_load(row, p.W - 1) > 0.0f) || isnan(r)) {
            r = -INFINITY; // empty segment
        }
        if (lane == 0) {
            out[sg] = r;
        }
    }
}

// MEAN, MEANVAR, MINMAX scores of one KV head's segments for all of its query heads, one segment per warp:
// each summary row is read once per group instead of once per query head, and the grid is gqa times
// smaller. UNION: MEANVAR's score into p.scores and MINMAX's into p.scores_b, from one read of the row.
// Also zeroes the block counters of the combine in radar_attn_kernel.
template <int D, typename Ts>
__launch_bounds__(RADAR_SCORE_NTHREADS)
static __global__ void radar_score_summary_gqa(const radar_attn_params p) {
    constexpr int nwarps = RADAR_SCORE_NTHREADS/WARP_SIZE;
    constexpr int nq     = D/WARP_SIZE;

    const int hk   = blockIdx.y;
    const int st   = blockIdx.z;
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;

    if (p.counters && blockIdx.x == 0) {
        for (int g = threadIdx.x; g < p.gqa; g += RADAR_SCORE_NTHREADS) {
            p.counters[(int64_t) st*p.n_hq + hk*p.gqa + g] = 0;
        }
    }

    const radar_counts cnt = radar_get_counts(p, st);
    const int sg = blockIdx.x*nwarps + warp;
    if (cnt.n_cand <= p.top_k || sg >= cnt.n_cand) {
        return; // every candidate is kept, or past the candidates
    }

    const Ts * row = (const Ts *) (p.s + hk*p.nbs1 + sg*p.nbs2 + st*p.nbs3);
    const bool two  = p.score != GGML_RADAR_SCORE_MEAN;  // MEANVAR: mean, var; MINMAX: min, max
    const bool both = p.score == GGML_RADAR_SCORE_UNION; // mean, var, then min, max
    float r0[nq];
    float r1[nq];
    float r2[nq];
    float r3[nq];
#pragma unroll
    for (int i = 0; i < nq; ++i) {
        r0[i] = radar_s_load(row, i*WARP_SIZE + lane);
        r1[i] = two  ? radar_s_load(row,   D + i*WARP_SIZE + lane) : 0.0f;
        r2[i] = both ? radar_s_load(row, 2*D + i*WARP_SIZE + lane) : 0.0f;
        r3[i] = both ? radar_s_load(row, 3*D + i*WARP_SIZE + lane) : 0.0f;
    }
    const bool empty = !(radar_s_load(row, p.W - 1) > 0.0f);

    for (int g = 0; g < p.gqa; ++g) {
        const int     h  = hk*p.gqa + g;
        const float * qf = (const float *) (p.q + h*p.nbq2 + st*p.nbq3);

        float a = 0.0f;
        float v = 0.0f;
        float b = 0.0f; // UNION: MINMAX's bound
#pragma unroll
        for (int i = 0; i < nq; ++i) {
            const float qi = qf[i*WARP_SIZE + lane];
            if (p.score == GGML_RADAR_SCORE_MINMAX) {
                a += fmaxf(qi*r0[i], qi*r1[i]);
            } else {
                a += qi*r0[i];
                v += qi*qi*r1[i];
                if (both) {
                    b += fmaxf(qi*r2[i], qi*r3[i]);
                }
            }
        }
        a = warp_reduce_sum(a);
        float r = p.scale*a;
        if (p.score == GGML_RADAR_SCORE_MEANVAR || both) {
            r += 0.5f*p.scale*p.scale*warp_reduce_sum(v);
        }
        if (empty || isnan(r)) {
            r = -INFINITY; // empty segment
        }
        const int64_t o = ((int64_t) st*p.n_hq + h)*p.n_seg_cap + sg;
        if (lane == 0) {
            p.scores[o] = r;
        }
        if (both) {
            float rb = p.scale*warp_reduce_sum(b);
            if (empty || isnan(rb)) {
                rb = -INFINITY;
            }
            if (lane == 0) {
                p.scores_b[o] = rb;
            }
        }
    }
}

// log-sum-exp of the exact logits of the valid cells in [c_beg, c_end) of K for the query q_sh, by the whole
// warp (the result in every lane); -inf when no cell is valid
template <int D, ggml_type type_K>
static __device__ __forceinline__ float radar_cells_lse(const radar_attn_params & p, const char * q_sh,
        const char * K, const char * mrow, const float slope, const int c_beg, const int c_end) {
    constexpr int TK = radar_k_lanes<type_K, D>();
    constexpr int CW = WARP_SIZE/TK; // cells per warp step

    const int lane = threadIdx.x % WARP_SIZE;
    const int il   = lane % TK;
    const int ic   = lane / TK;

    float mx  = -INFINITY;
    float sum = 0.0f;
    for (int c = c_beg + ic; c - ic < c_end; c += CW) { // c - ic: the same in all lanes, the warp steps together
        float mv = -INFINITY;
        if (c < c_end) {
            mv = radar_mask_value(mrow, c, p.mask_f16);
        }
        const bool valid = mv != -INFINITY;

        radar_k_row<type_K, D, TK> kr;
        kr.load(K + (int64_t) (valid ? c : 0)*p.nbk1, il, valid);
        float x = kr.dot(q_sh, il);

        if (valid) {
            x *= p.kq_scale;
            if (p.softcap != 0.0f) {
                x = p.softcap*tanhf(x);
            }
            const float l = x + slope*mv;
            if (l > mx) {
                sum = sum*expf(mx - l) + 1.0f;
                mx  = l;
            } else {
                sum += expf(l - mx);
            }
        }
    }
    radar_warp_merge_lse<TK>(mx, sum); // the cell groups of the warp
    return sum > 0.0f ? mx + logf(sum) : -INFINITY;
}

// ORACLE: log-sum-exp of the exact logits of the segment's valid cells; one warp per segment
template <int D, ggml_type type_K>
__launch_bounds__(RADAR_SCORE_NTHREADS)
static __global__ void radar_score_oracle(const radar_attn_params p) {
    constexpr int nwarps = RADAR_SCORE_NTHREADS/WARP_SIZE;

    const int h    = blockIdx.y;
    const int st   = blockIdx.z;
    const int hk   = h/p.gqa;
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;

    const radar_counts cnt = radar_get_counts(p, st);
    const int sg0 = blockIdx.x*RADAR_ORACLE_SEGS;
    const int sg1 = min(sg0 + RADAR_ORACLE_SEGS, cnt.n_cand);
    if (cnt.n_cand <= p.top_k || sg0 >= sg1) {
        return;
    }

    __shared__ __align__(16) char q_sh[radar_q_nbytes<type_K, D>()];
    radar_load_q<type_K, D>((const float *) (p.q + h*p.nbq2 + st*p.nbq3), q_sh);
    __syncthreads();

    const float  slope = get_alibi_slope(p.max_bias, h, p.n_head_log2, p.m0, p.m1);
    const char * K     = p.k    + hk*p.nbk2 + st*p.nbk3;
    const char * mrow  = p.mask + st*p.nbm3;
    float      * out   = p.scores + ((int64_t) st*p.n_hq + h)*p.n_seg_cap;

    for (int sg = sg0 + warp; sg < sg1; sg += nwarps) {
        const float r = radar_cells_lse<D, type_K>(p, q_sh, K, mrow, slope, sg*p.L, (sg + 1)*p.L);
        if (lane == 0) {
            out[sg] = r;
        }
    }
}

// rescore, stage 2 of the two-stage selection: the exact score of each candidate of stage 1 (p.cand, of the
// head or of its KV group), as ORACLE's but without the sink cells (attended anyway), into p.exact in the
// order of p.cand. One block per candidate and NG query heads of one KV group (NG = 1: per-head selection;
// shared selection: the heads of the group, in chunks of NG), so that the candidate's K rows are read once for
// all the heads of a block: the cells of the candidate are spread over all threads of the block, and each
// thread has its K rows and mask values of a batch in flight at once (no load waits on another: the mask does
// not predicate the K load), so that a candidate costs about one round trip to memory instead of one per cell;
// the (max, sum) of the threads merge in shared memory.
// With type_V (a mass target, per-head selection, NG = 1): the V rows of the batch are loaded with the K rows,
// and the block also writes the attention output over the candidate's cells (p.cpart), which radar_select_mass
// merges for the kept candidates: every kept cell is read once, and no attention kernel runs after the
// selection. The block past the candidates does the same for the always-attended cells (with the values or,
// for a shared selection, only their score). type_V == GGML_TYPE_COUNT: scores only.
template <int D, ggml_type type_K, ggml_type type_V, int NG>
__launch_bounds__(RADAR_RESCORE_NTHREADS)
static __global__ void radar_rescore(const radar_attn_params p) {
    constexpr int  nthreads = RADAR_RESCORE_NTHREADS;
    constexpr int  nwarps   = nthreads/WARP_SIZE;
    constexpr int  TK       = radar_k_lanes<type_K, D>();                       // lanes per K row
    constexpr int  RB       = nthreads/TK;                                      // K rows per step of the block
    constexpr int  LB       = radar_k_lane_bytes<type_K, D>();
    constexpr int  BK       = 128/LB < 4 ? 4 : (128/LB > 16 ? 16 : 128/LB);    // K rows per thread and batch
    constexpr bool with_v   = type_V != GGML_TYPE_COUNT;
    constexpr int  E        = D/TK;                                             // values of a V row per lane
    constexpr int  QB       = radar_q_nbytes<type_K, D>();
    static_assert(!with_v || NG == 1, "the values are merged per head");
    static_assert(NG <= WARP_SIZE, "one thread of warp 0 per head");
    typedef radar_k_row<type_K, D, TK> k_row;
    typedef radar_v_slice<with_v ? type_V : GGML_TYPE_F32, E> v_slice;

    // blockIdx.y: the chunk of NG heads [h0, h0 + ng) of KV head hk (a chunk per query head with NG = 1)
    const int n_chunk = (p.gqa + NG - 1)/NG;
    const int i    = blockIdx.x; // index into the candidate list
    const int hk   = blockIdx.y / n_chunk;
    const int h0   = hk*p.gqa + (blockIdx.y % n_chunk)*NG;
    const int ng   = min(NG, (hk + 1)*p.gqa - h0);
    const int st   = blockIdx.z;
    const int tid  = threadIdx.x;
    const int lane = tid % WARP_SIZE;
    const int warp = tid / WARP_SIZE;
    const int il   = tid % TK;
    const int rk   = tid / TK;

    __shared__ __align__(16) char q_sh[NG][QB];
    __shared__ float2 red_sh[nwarps][NG];
    __shared__ float  acc_sh[with_v ? nwarps : 1][with_v ? D : 1]; // the values of each warp

    // the candidate's id is read together with the counts (an entry past the list is never used). With a
    // mass target, block i == n_rescore scores the always-attended cells instead: the sinks [0, n0) and the
    // recent segments with the tail [c1, n_kv), laid end to end as cells [0, n0 + n_kv - c1). With the values,
    // every candidate is scored also when no more than top_k exist (then all of them are kept).
    const bool         alw  = i == p.n_rescore;
    const int          item = p.shared ? st*p.n_hkv + hk : st*p.n_hq + h0;
    const int          sg   = alw ? 0 : p.cand[(int64_t) item*(p.n_rescore + 1) + 1 + i];
    const radar_counts cnt  = radar_get_counts(p, st);
    if ((!with_v && cnt.n_cand <= p.top_k) || (!alw && i >= min(p.n_rescore, cnt.n_cand))) {
        return;
    }

    float slope[NG];
#pragma unroll
    for (int g = 0; g < NG; ++g) {
        slope[g] = get_alibi_slope(p.max_bias, h0 + g, p.n_head_log2, p.m0, p.m1);
    }
    const char * K     = p.k    + hk*p.nbk2 + st*p.nbk3;
    const char * V     = p.v    + hk*p.nbv2 + st*p.nbv3;
    const char * mrow  = p.mask + st*p.nbm3;
    const int    n0    = min(p.n_sink, cnt.n_seg*p.L);
    const int    c1    = max(cnt.n_cand*p.L, n0);
    const int    c_beg = alw ? 0 : max(sg*p.L, p.n_sink);
    const int    c_end = alw ? n0 + p.n_kv - c1 : (sg + 1)*p.L;
    const int    c_gap = alw ? c1 - n0 : 0; // cells [n0, c_end) lie c_gap further on

    // online softmax of each head over the batches; every lane of a K row holds the same values, and E of the
    // row's values. The heads past ng (the last chunk of a group) are skipped: a branch the same in the block.
    float mx[NG];
    float sum[NG];
#pragma unroll
    for (int g = 0; g < NG; ++g) {
        mx[g]  = -INFINITY;
        sum[g] = 0.0f;
    }
    float acc[with_v ? E : 1];
#pragma unroll
    for (int e = 0; e < (with_v ? E : 1); ++e) {
        acc[e] = 0.0f;
    }
    for (int cb = c_beg; cb < c_end; cb += BK*RB) { // the same in all threads
        k_row   kr[BK];
        v_slice vr[with_v ? BK : 1];
        float   mv[BK];
#pragma unroll
        for (int j = 0; j < BK; ++j) {
            const int  c  = cb + j*RB + rk;
            const bool in = c < c_end;
            const int  cc = c < n0 ? c : c + c_gap;
            mv[j] = in ? radar_mask_value(mrow, cc, p.mask_f16) : -INFINITY;
            kr[j].load(K + (int64_t) (in ? cc : 0)*p.nbk1, il, in);
            if constexpr (with_v) {
                vr[j].load(V + (int64_t) (in ? cc : 0)*p.nbv1, il*E, in);
            }
        }
        if (cb == c_beg) {
            // the queries, while the first batch of K rows is on its way
            for (int g = 0; g < ng; ++g) {
                radar_load_q<type_K, D>((const float *) (p.q + (h0 + g)*p.nbq2 + st*p.nbq3), q_sh[g]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int g = 0; g < NG; ++g) {
            if (g >= ng) {
                break;
            }
            float l[BK];
            float bmax = -INFINITY;
#pragma unroll
            for (int j = 0; j < BK; ++j) {
                float x = kr[j].dot(q_sh[g], il);
                x *= p.kq_scale;
                if (p.softcap != 0.0f) {
                    x = p.softcap*tanhf(x);
                }
                l[j] = mv[j] != -INFINITY ? x + slope[g]*mv[j] : -INFINITY; // -inf: masked or past the segment
                bmax = fmaxf(bmax, l[j]);
            }
            if (bmax > mx[g]) {
                const float f = expf(mx[g] - bmax);
                sum[g] *= f;
                if constexpr (with_v) {
#pragma unroll
                    for (int e = 0; e < E; ++e) {
                        acc[e] *= f;
                    }
                }
                mx[g] = bmax;
            }
            if (mx[g] != -INFINITY) {
#pragma unroll
                for (int j = 0; j < BK; ++j) {
                    const float w = expf(l[j] - mx[g]);
                    sum[g] += w;
                    if constexpr (with_v) {
                        vr[j].mad(acc, w);
                    }
                }
            }
        }
    }

    // merge the K rows of the warp, then the warps
    if constexpr (with_v) {
#pragma unroll
        for (int offset = TK; offset < WARP_SIZE; offset <<= 1) {
            const float mx2  = __shfl_xor_sync(0xFFFFFFFF, mx[0],  offset, WARP_SIZE);
            const float sum2 = __shfl_xor_sync(0xFFFFFFFF, sum[0], offset, WARP_SIZE);
            const float mn   = fmaxf(mx[0], mx2);
            const float f1   = mn == -INFINITY ? 0.0f : expf(mx[0] - mn);
            const float f2   = mn == -INFINITY ? 0.0f : expf(mx2   - mn);
#pragma unroll
            for (int e = 0; e < E; ++e) {
                acc[e] = acc[e]*f1 + __shfl_xor_sync(0xFFFFFFFF, acc[e], offset, WARP_SIZE)*f2;
            }
            sum[0] = sum[0]*f1 + sum2*f2;
            mx[0]  = mn;
        }
        if (lane < TK) {
#pragma unroll
            for (int e = 0; e < E; ++e) {
                acc_sh[warp][il*E + e] = acc[e];
            }
        }
    } else {
#pragma unroll
        for (int g = 0; g < NG; ++g) {
            radar_warp_merge_lse<TK>(mx[g], sum[g]);
        }
    }
    if (lane == 0) {
#pragma unroll
        for (int g = 0; g < NG; ++g) {
            red_sh[warp][g] = make_float2(mx[g], sum[g]);
        }
    }
    __syncthreads();
    if (tid < ng) {
        // thread g merges the warps of head h0 + g
        float m = -INFINITY;
        float s = 0.0f;
        for (int w = 0; w < nwarps; ++w) {
            const float2 ms = red_sh[w][tid];
            const float  mn = fmaxf(m, ms.x);
            if (mn != -INFINITY) {
                s = s*expf(m - mn) + ms.y*expf(ms.x - mn);
                m = mn;
            }
        }
        const float r = s > 0.0f ? m + logf(s) : -INFINITY;
        if (!alw) {
            p.exact[((int64_t) st*p.n_hq + h0 + tid)*p.n_rescore + i] = r;
        } else {
            p.always[(int64_t) st*p.n_hq + h0 + tid] = r;
        }
    }
    if constexpr (with_v) {
        // the output over the candidate's cells: the warps' values at the block's max, over the block's sum
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < nwarps; ++w) {
            M = fmaxf(M, red_sh[w][0].x);
        }
        float S = 0.0f;
        float f[nwarps];
#pragma unroll
        for (int w = 0; w < nwarps; ++w) {
            f[w] = M == -INFINITY ? 0.0f : expf(red_sh[w][0].x - M);
            S   += red_sh[w][0].y*f[w];
        }
        const float inv = S > 0.0f ? 1.0f/S : 0.0f;
        float * out = p.cpart + (((int64_t) st*p.n_hq + h0)*(p.n_rescore + 1) + i)*D;
        for (int d = tid; d < D; d += nthreads) {
            float o = 0.0f;
#pragma unroll
            for (int w = 0; w < nwarps; ++w) {
                o = fmaf(acc_sh[w][d], f[w], o);
            }
            out[d] = o*inv;
        }
    }
}

static __device__ __forceinline__ float radar_block_max(float x, float * red) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    x = warp_reduce_max(x);
    if (lane == 0) {
        red[warp] = x;
    }
    __syncthreads();
    x = red[0];
    for (int w = 1; w < (int) blockDim.x/WARP_SIZE; ++w) {
        x = fmaxf(x, red[w]);
    }
    __syncthreads();
    return x;
}

static __device__ __forceinline__ float radar_block_sum(float x, float * red) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    x = warp_reduce_sum(x);
    if (lane == 0) {
        red[warp] = x;
    }
    __syncthreads();
    x = red[0];
    for (int w = 1; w < (int) blockDim.x/WARP_SIZE; ++w) {
        x += red[w];
    }
    __syncthreads();
    return x;
}

// inclusive prefix sum of x over the threads of the block, in thread order; total = sum of the block
// (int for counts, float for masses: the warps' partial sums are added in warp order either way)
template <typename T>
static __device__ __forceinline__ T radar_block_scan(const T x, T * red, T & total) {
    const int lane = threadIdx.x % WARP_SIZE;
    const int warp = threadIdx.x / WARP_SIZE;
    T incl = x;
#pragma unroll
    for (int offset = 1; offset < WARP_SIZE; offset <<= 1) {
        const T y = __shfl_up_sync(0xFFFFFFFF, incl, offset, WARP_SIZE);
        incl += lane >= offset ? y : T(0);
    }
    if (lane == WARP_SIZE - 1) {
        red[warp] = incl;
    }
    __syncthreads();
    T before = 0;
    total = 0;
    for (int w = 0; w < (int) blockDim.x/WARP_SIZE; ++w) {
        const T t = red[w];
        before += w < warp ? t : T(0);
        total  += t;
    }
    __syncthreads();
    return before + incl;
}

// the keys equal to the threshold key lo in the ranges [i_beg, i_end) of the threads before this one: where
// this thread's own keys equal to lo rank among them (the first kk of them are kept, in segment order)
static __device__ __forceinline__ int radar_eq_before(const uint32_t * keys, const int i_beg, const int i_end,
        const uint32_t lo, int * red_i) {
    int n_eq = 0;
    for (int i = i_beg; i < i_end; ++i) {
        n_eq += keys[i] == lo;
    }
    int total;
    return radar_block_scan(n_eq, red_i, total) - n_eq;
}

// shared selection: sc[i] = the summed attention share of input i < n_in over the query heads of KV head hk,
// logsumexp_h (score_h[i] - lse_h), where score_h is the row of head h in scores [ld_scores, n_hq, ns].
// Thread tid writes the inputs i = tid (mod nthreads), as radar_scores_to_keys reads them
template <int nthreads>
static __device__ void radar_group_share(const radar_attn_params & p, const float * scores, const int ld_scores,
        const int hk, const int st, const int n_in, float * sc, float * red_f) {
    const int tid = threadIdx.x;
    for (int i = tid; i < n_in; i += nthreads) {
        sc[i] = -INFINITY;
    }
    for (int g = 0; g < p.gqa; ++g) {
        const float * sh = scores + ((int64_t) st*p.n_hq + hk*p.gqa + g)*ld_scores;
        float mx = -INFINITY;
        for (int i = tid; i < n_in; i += nthreads) {
            mx = fmaxf(mx, sh[i]);
        }
        mx = radar_block_max(mx, red_f);
        if (mx == -INFINITY) {
            continue;
        }
        float sum = 0.0f;
        for (int i = tid; i < n_in; i += nthreads) {
            sum += expf(sh[i] - mx);
        }
        const float lse = mx + logf(radar_block_sum(sum, red_f));
        for (int i = tid; i < n_in; i += nthreads) {
            const float a  = sh[i] - lse;
            const float b  = sc[i];
            const float hi = fmaxf(a, b);
            sc[i] = hi == -INFINITY ? -INFINITY : hi + log1pf(expf(fminf(a, b) - hi));
        }
    }
}

// top-k of the inputs by (score desc, input asc), as the CPU's nth_element; one block per selection. The
// inputs are the candidate segments [0, n_cand), or with cand (stage 2 of the rescore) the first
// min(n_rescore, n_cand) segments of each list of cand, ascending: ties still go to the lower segment.
//   scores: [ld_scores, n_hq, ns] score of each input per query head
//   out:    [ld_out, n_sel_items, ns] number of kept segments, then their ids ascending; with recent, then
//           the recent segments too
// UNION, without cand (stage one): the best (top_k + 1)/2 by MEANVAR's scores (scores), then the best of the
// others by MINMAX's (p.scores_b), as the CPU kernel.
// The keys live in dynamic shared memory when n_seg_cap of them fit (p.select_smem), else in place of the scores.
__launch_bounds__(RADAR_SELECT_NTHREADS)
static __global__ void radar_select(const radar_attn_params p, float * scores, const int ld_scores,
        const int * cand, int * out_base, const int ld_out, const int top_k, const bool recent) {
    constexpr int nthreads = RADAR_SELECT_NTHREADS;
    constexpr int nwarps   = nthreads/WARP_SIZE;

    const int item = blockIdx.x;
    const int st   = blockIdx.y;
    const int tid  = threadIdx.x;

    extern __shared__ uint32_t keys_sh[];
    __shared__ float red_f[nwarps];
    __shared__ int   red_i[nwarps];

    const int n_items = p.shared ? p.n_hkv : p.n_hq;
    int * out = out_base + ((int64_t) st*n_items + item)*ld_out;

    const radar_counts cnt = radar_get_counts(p, st);
    const int n_cand = cnt.n_cand;
    const int n_in   = cand ? min(p.n_rescore, n_cand) : n_cand;

    if (n_in <= top_k) {
        // every candidate kept (with cand: n_cand <= top_k < n_rescore, the inputs are [0, n_cand) too)
        const int n_out = recent ? cnt.n_seg : n_cand;
        for (int i = tid; i < n_out; i += nthreads) {
            out[1 + i] = i;
        }
        if (tid == 0) {
            out[0] = n_out;
        }
        return;
    }
    if (cand) {
        cand += ((int64_t) st*n_items + item)*(p.n_rescore + 1) + 1;
    }

    const bool two_scores = !cand && p.score == GGML_RADAR_SCORE_UNION; // UNION's stage one
    float * sc;
    float * sc_b = nullptr; // UNION: MINMAX's
    if (p.shared) {
        sc = p.comb + ((int64_t) st*p.n_hkv + item)*p.n_seg_cap;
        radar_group_share<nthreads>(p, scores, ld_scores, item, st, n_in, sc, red_f);
        if (two_scores) {
            sc_b = p.comb_b + ((int64_t) st*p.n_hkv + item)*p.n_seg_cap;
            radar_group_share<nthreads>(p, p.scores_b, ld_scores, item, st, n_in, sc_b, red_f);
        }
    } else {
        sc = scores + ((int64_t) st*p.n_hq + item)*ld_scores;
        if (two_scores) {
            sc_b = p.scores_b + ((int64_t) st*p.n_hq + item)*ld_scores;
        }
    }

    // each thread converts the scores it wrote (shared) or nobody else reads (own head): in place is safe.
    // Loaded in batches: the loads of a batch are in flight together (keys may alias sc for the compiler)
    uint32_t * keys = p.select_smem ? keys_sh : (uint32_t *) sc;
    radar_scores_to_keys<nthreads>(sc, keys, n_in, tid);
    __syncthreads();

    if (top_k > 0) {
        // written in ascending segment order, each thread taking a contiguous range of candidates
        const int per   = (n_in + nthreads - 1)/nthreads;
        const int i_beg = min(tid*per, n_in);
        const int i_end = min(i_beg + per, n_in);
        int total;

        int k_rest = top_k; // kept by the threshold below
        if (two_scores) {
            // UNION: the best k_a by MEANVAR get key 0, below the key of any score (even -inf), so they are
            // kept and the second threshold passes over them; the others get their MINMAX key. The thread's
            // own range only, after every thread is past the threshold (the syncs of the scan)
            const int k_a = (top_k + 1)/2;
            k_rest = top_k - k_a;
            const radar_top_k_thr thr = radar_top_k_threshold<nthreads>(keys, n_in, k_a);
            const int kk = thr.all_eq ? INT_MAX : thr.kk;
            int r_eq = radar_eq_before(keys, i_beg, i_end, thr.lo, red_i);
            for (int i = i_beg; i < i_end; ++i) {
                const uint32_t u = keys[i];
                keys[i] = u > thr.lo || (u == thr.lo && r_eq++ < kk) ? 0u : radar_key(sc_b[i]);
            }
            __syncthreads();
        }

        // kept: key > T, and the first kk with key == T (all of them with all_eq); UNION: also key 0. With
        // nothing left to keep, T is above every key (the largest key, +inf's, is 0xFF800000)
        uint32_t prefix = 0xFFFFFFFFu;
        int      kk     = 0;
        if (k_rest > 0) {
            // UNION: more than k_rest keys are not 0 (n_in > top_k), so T is above 0
            const radar_top_k_thr thr = radar_top_k_threshold<nthreads>(keys, n_in, k_rest);
            prefix = thr.lo;
            kk     = thr.all_eq ? INT_MAX : thr.kk;
        }

        const int eq_before = radar_eq_before(keys, i_beg, i_end, prefix, red_i);

        int n_keep = 0;
        int r_eq   = eq_before;
        for (int i = i_beg; i < i_end; ++i) {
            const uint32_t u = keys[i];
            n_keep += (two_scores && u == 0u) || u > prefix || (u == prefix && r_eq++ < kk);
        }
        int pos = radar_block_scan(n_keep, red_i, total) - n_keep;

        r_eq = eq_before;
        for (int i = i_beg; i < i_end; ++i) {
            const uint32_t u = keys[i];
            if ((two_scores && u == 0u) || u > prefix || (u == prefix && r_eq++ < kk)) {
                out[1 + pos++] = i;
            }
        }
    }

    // the segments of the kept inputs: the lists are ascending, so is the map
    if (cand) {
        __syncthreads();
        for (int i = tid; i < top_k; i += nthreads) {
            out[1 + i] = cand[out[1 + i]];
        }
    }

    // the recent segments
    const int n_recent_seg = recent ? cnt.n_seg - n_cand : 0;
    for (int i = tid; i < n_recent_seg; i += nthreads) {
        out[1 + top_k + i] = n_cand + i;
    }
    if (tid == 0) {
        out[0] = top_k + n_recent_seg;
    }
}

// stage two with a mass target (p.mass > 0): each head's exact scores of its candidates (p.cand, p.exact) and
// the mass of its always-attended cells (p.always, with the sink logit) become shares of all the mass the two
// stages know of, summed over the group when shared; the candidates are ranked by share (ties to the lower
// segment), the top_k best kept, then more while the kept share is below p.mass (p.mass times the group size
// when shared), up to all of them (all of them at p.mass = 1). Per head (p.merge, then one head per block),
// dst of the head: the outputs of its kept candidates and of its always-attended cells (p.cpart, from
// radar_rescore) weighted by their exact masses, the sink in the denominator. Shared, the list of the kept
// segments (p.sel) for radar_attn_kernel instead. One block per selection.
// The block is short and its steps wait on each other, so what it waits for is taken off the chain: the
// outputs it merges are loaded first, while the ranking runs (they do not depend on which are kept: the others
// get weight 0); up to RADAR_MASS_RANK_MAX candidates are ranked by counting the larger keys (one barrier)
// instead of a bitonic sort (28 barriers for 128 keys).
// Dynamic shared memory: n_pow2 sort keys (8 bytes) + 2 n_rescore floats, n_rescore <= RADAR_MASS_MAX_CAND.
template <int D>
__launch_bounds__(RADAR_SELECT_NTHREADS)
static __global__ void radar_select_mass(const radar_attn_params p, const int n_pow2) {
    constexpr int nthreads = RADAR_SELECT_NTHREADS;
    constexpr int nwarps   = nthreads/WARP_SIZE;
    constexpr int NV       = D/4;          // float4 of an output row
    constexpr int NP       = nthreads/NV;  // rows summed side by side: thread t takes rows t/NV + j*NP, values t % NV
    constexpr int NB       = 16;           // rows of a thread loaded at once (all of them up to NB*NP candidates)
    static_assert(nthreads % NV == 0, "whole rows per step");

    const int item = blockIdx.x;
    const int st   = blockIdx.y;
    const int tid  = threadIdx.x;

    extern __shared__ uint64_t mkeys[];         // [n_pow2] (share bits << 32) | ~index, sorted descending
    float * share = (float *) (mkeys + n_pow2); // [n_rescore] summed share of each candidate
    float * w_sh  = share + p.n_rescore;        // [n_rescore] weight of each candidate in dst (0: not kept)
    __shared__ float  red_f[nwarps];
    __shared__ float4 part_sh[nthreads];
    __shared__ int    cut_sh;

    const int h0 = p.shared ? item*p.gqa : item;
    const int nh = p.shared ? p.gqa : 1;

    const radar_counts cnt = radar_get_counts(p, st);
    const int n_in   = min(p.n_rescore, cnt.n_cand);
    int       n_keep = n_in; // no more candidates than top_k (all rescored, n_cand <= top_k < n_rescore): all kept

    // the first rows of the outputs to merge, on their way while the ranking runs
    const int     iv  = tid % NV;
    const int     ir  = tid / NV;
    const float4 *cp4 = (const float4 *) (p.cpart + ((int64_t) st*p.n_hq + h0)*(p.n_rescore + 1)*D); // pool: 16-byte aligned
    float4 x[NB];
    if (p.merge) {
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            const int i = ir + j*NP;
            x[j] = i < n_in ? cp4[(int64_t) i*NV + iv] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        }
    }

    if (cnt.n_cand > p.top_k) {
        // shares: exp(exact - T) with T = logsumexp(exact over the candidates, always, sink), summed over the heads
        for (int i = tid; i < n_in; i += nthreads) {
            share[i] = 0.0f;
        }
        float base = 0.0f; // share of the always-attended cells (the same in every thread)
        for (int g = 0; g < nh; ++g) {
            const float * ex = p.exact + ((int64_t) st*p.n_hq + h0 + g)*p.n_rescore;
            const float   ac = p.always[(int64_t) st*p.n_hq + h0 + g];
            const float   sk = p.sinks ? p.sinks[h0 + g] : -INFINITY; // a sink logit is mass that is always there
            const float   ah = fmaxf(ac, sk);
            const float   al = ah == -INFINITY ? -INFINITY : ah + log1pf(expf(fminf(ac, sk) - ah));
            float mx = al;
            for (int i = tid; i < n_in; i += nthreads) {
                mx = fmaxf(mx, ex[i]);
            }
            mx = radar_block_max(mx, red_f);
            if (mx == -INFINITY) {
                continue;
            }
            float sum = 0.0f;
            for (int i = tid; i < n_in; i += nthreads) {
                sum += expf(ex[i] - mx);
            }
            const float tot = mx + logf(radar_block_sum(sum, red_f) + expf(al - mx));
            for (int i = tid; i < n_in; i += nthreads) {
                share[i] += expf(ex[i] - tot);
            }
            base += expf(al - tot);
        }
        __syncthreads();

        // best first: shares are >= 0, so their bits order like them; ~index puts the lower index first on ties
        if (n_in <= RADAR_MASS_RANK_MAX) {
            // the rank of a key is the number of larger keys (all keys differ in their index bits)
            for (int i = tid; i < n_in; i += nthreads) {
                const uint64_t ki = ((uint64_t) __float_as_uint(share[i]) << 32) | (uint32_t) ~i;
                int rank = 0;
                for (int j = 0; j < n_in; ++j) {
                    rank += (((uint64_t) __float_as_uint(share[j]) << 32) | (uint32_t) ~j) > ki;
                }
                mkeys[rank] = ki;
            }
            __syncthreads();
        } else {
            for (int i = tid; i < n_pow2; i += nthreads) {
                mkeys[i] = i < n_in ? ((uint64_t) __float_as_uint(share[i]) << 32) | (uint32_t) ~i : 0;
            }
            __syncthreads();
            for (int k = 2; k <= n_pow2; k <<= 1) {
                for (int j = k >> 1; j > 0; j >>= 1) {
                    for (int i = tid; i < n_pow2; i += nthreads) {
                        const int ij = i ^ j;
                        if (ij > i) {
                            const uint64_t a = mkeys[i];
                            const uint64_t b = mkeys[ij];
                            if ((i & k) == 0 ? a < b : a > b) {
                                mkeys[i]  = b;
                                mkeys[ij] = a;
                            }
                        }
                    }
                    __syncthreads();
                }
            }
        }

        // the first count whose kept share reaches the target: base + the shares before it, each thread taking a
        // contiguous range of the ranking
        if (p.mass < 1.0f) {
            const int per   = (n_in + nthreads - 1)/nthreads;
            const int j_beg = min(tid*per, n_in);
            const int j_end = min(j_beg + per, n_in);
            float part = 0.0f;
            for (int j = j_beg; j < j_end; ++j) {
                part += __uint_as_float((uint32_t) (mkeys[j] >> 32));
            }
            if (tid == 0) {
                cut_sh = n_in;
            }
            float total_f;
            float known = base + radar_block_scan(part, red_f, total_f) - part; // its syncs publish cut_sh
            const float target = p.mass*nh;
            for (int j = j_beg; j < j_end; ++j) {
                if (known >= target) {
                    atomicMin(&cut_sh, j);
                    break;
                }
                known += __uint_as_float((uint32_t) (mkeys[j] >> 32));
            }
            __syncthreads();
            n_keep = min(n_in, max(p.top_k, cut_sh));
        }
    }

    if (!p.merge) {
        // a shared selection: the list of kept segments for radar_attn_kernel, best first (in candidate order
        // without a ranking), then the recent segments. radar_rescore wrote no values (read once per query head
        // they would cost as much as the candidates' keys again): the kernel reads the kept cells' K and V.
        const int * cand = p.cand + ((int64_t) st*p.n_hkv + item)*(p.n_rescore + 1) + 1;
        int       * out  = p.sel  + ((int64_t) st*p.n_hkv + item)*(p.n_seg_cap + 1);
        for (int j = tid; j < n_keep; j += nthreads) {
            out[1 + j] = cand[n_keep < n_in ? (int) ~(uint32_t) mkeys[j] : j];
        }
        for (int j = tid; j < cnt.n_seg - cnt.n_cand; j += nthreads) {
            out[1 + n_keep + j] = cnt.n_cand + j;
        }
        if (tid == 0) {
            out[0] = n_keep + cnt.n_seg - cnt.n_cand;
        }
        return;
    }

    // dst of the head (per-head selection: nh == 1). The weight of a candidate is its exact mass if it is kept
    // (the first n_keep of the ranking; all n_in without a ranking), else 0
    const int     h  = h0;
    const float * ex = p.exact + ((int64_t) st*p.n_hq + h)*p.n_rescore;
    const float   al = p.always[(int64_t) st*p.n_hq + h];
    for (int i = tid; i < n_in; i += nthreads) {
        w_sh[i] = n_keep == n_in ? 1.0f : 0.0f;
    }
    __syncthreads();
    if (n_keep < n_in) {
        for (int j = tid; j < n_keep; j += nthreads) {
            w_sh[(int) ~(uint32_t) mkeys[j]] = 1.0f;
        }
    }
    __syncthreads();
    float mx = al;
    for (int i = tid; i < n_in; i += nthreads) {
        mx = w_sh[i] != 0.0f ? fmaxf(mx, ex[i]) : mx;
    }
    mx = radar_block_max(mx, red_f); // its syncs also order the flags before w_sh is rewritten
    float s = 0.0f;
    for (int i = tid; i < n_in; i += nthreads) {
        const float w = w_sh[i] != 0.0f && mx != -INFINITY ? expf(ex[i] - mx) : 0.0f;
        w_sh[i] = w;
        s += w;
    }
    const float wa = mx == -INFINITY ? 0.0f : expf(al - mx);
    const float S  = radar_block_sum(s, red_f) + wa; // its syncs publish w_sh

    float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (tid < NV) {
        const float4 c = cp4[(int64_t) p.n_rescore*NV + iv];
        o = make_float4(wa*c.x, wa*c.y, wa*c.z, wa*c.w);
    }
    for (int i0 = ir; i0 < n_in; i0 += NB*NP) {
        if (i0 != ir) { // past the prefetched rows
#pragma unroll
            for (int j = 0; j < NB; ++j) {
                const int i = i0 + j*NP;
                x[j] = i < n_in ? cp4[(int64_t) i*NV + iv] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            }
        }
#pragma unroll
        for (int j = 0; j < NB; ++j) {
            const int   i = i0 + j*NP;
            const float w = i < n_in ? w_sh[i] : 0.0f;
            o.x = fmaf(w, x[j].x, o.x);
            o.y = fmaf(w, x[j].y, o.y);
            o.z = fmaf(w, x[j].z, o.z);
            o.w = fmaf(w, x[j].w, o.w);
        }
    }
    part_sh[tid] = o;
    __syncthreads();
    if (tid < NV) {
        for (int q = 1; q < NP; ++q) {
            const float4 t = part_sh[q*NV + tid];
            o.x += t.x;
            o.y += t.y;
            o.z += t.z;
            o.w += t.w;
        }
        const float scl = radar_out_scale(mx, S, p.sinks, h);
        float * out = (float *) (p.dst + h*p.nb1 + st*p.nb3) + 4*iv;
        out[0] = o.x*scl;
        out[1] = o.y*scl;
        out[2] = o.z*scl;
        out[3] = o.w*scl;
    }
}

template <int D, ggml_type type_K>
static void radar_rescore_launch_K(const ggml_type type_V, const radar_attn_params & p, const int ns, cudaStream_t stream) {
    const int  NG = p.rescore_heads; // the group (in chunks) for a shared selection: the keys are read once per group
    const dim3 grid(p.n_rescore + (p.mass > 0.0f), p.n_hkv*((p.gqa + NG - 1)/NG), ns); // + the always-attended cells (mass target)
    if (!p.merge) { // scores only
        switch (NG) {
            case 1: radar_rescore<D, type_K, GGML_TYPE_COUNT, 1><<<grid, RADAR_RESCORE_NTHREADS, 0, stream>>>(p); break;
            case 4: radar_rescore<D, type_K, GGML_TYPE_COUNT, 4><<<grid, RADAR_RESCORE_NTHREADS, 0, stream>>>(p); break;
            case 8: radar_rescore<D, type_K, GGML_TYPE_COUNT, 8><<<grid, RADAR_RESCORE_NTHREADS, 0, stream>>>(p); break;
            default: GGML_ABORT("fatal error");
        }
        return;
    }
    switch (type_V) {
        case GGML_TYPE_F32:  radar_rescore<D, type_K, GGML_TYPE_F32,  1><<<grid, RADAR_RESCORE_NTHREADS, 0, stream>>>(p); break;
        case GGML_TYPE_F16:  radar_rescore<D, type_K, GGML_TYPE_F16,  1><<<grid, RADAR_RESCORE_NTHREADS, 0, stream>>>(p); break;
        case GGML_TYPE_Q8_0: radar_rescore<D, type_K, GGML_TYPE_Q8_0, 1><<<grid, RADAR_RESCORE_NTHREADS, 0, stream>>>(p); break;
        default: GGML_ABORT("fatal error");
    }
}

template <int D>
static void radar_rescore_launch_D(const ggml_type type_K, const ggml_type type_V, const radar_attn_params & p, const int ns,
        cudaStream_t stream) {
    switch (type_K) {
        case GGML_TYPE_F32:  radar_rescore_launch_K<D, GGML_TYPE_F32> (type_V, p, ns, stream); break;
        case GGML_TYPE_F16:  radar_rescore_launch_K<D, GGML_TYPE_F16> (type_V, p, ns, stream); break;
        case GGML_TYPE_Q8_0: radar_rescore_launch_K<D, GGML_TYPE_Q8_0>(type_V, p, ns, stream); break;
        default: GGML_ABORT("fatal error");
    }
}

template <int D>
static void radar_score_launch_D(const ggml_type type_K, const radar_attn_params & p, const bool score_gqa,
        const int ns, cudaStream_t stream) {
    const int n_seg_max = std::min(p.n_kv/p.L, p.n_seg_cap);
    if (p.score == GGML_RADAR_SCORE_ORACLE) {
        const dim3 grid((n_seg_max + RADAR_ORACLE_SEGS - 1)/RADAR_ORACLE_SEGS, p.n_hq, ns);
        switch (type_K) {
            case GGML_TYPE_F32:  radar_score_oracle<D, GGML_TYPE_F32> <<<grid, RADAR_SCORE_NTHREADS, 0, stream>>>(p); break;
            case GGML_TYPE_F16:  radar_score_oracle<D, GGML_TYPE_F16> <<<grid, RADAR_SCORE_NTHREADS, 0, stream>>>(p); break;
            case GGML_TYPE_Q8_0: radar_score_oracle<D, GGML_TYPE_Q8_0><<<grid, RADAR_SCORE_NTHREADS, 0, stream>>>(p); break;
            default: GGML_ABORT("fatal error");
        }
    } else if (score_gqa) {
        constexpr int nwarps = RADAR_SCORE_NTHREADS/WARP_SIZE;
        const dim3 grid((n_seg_max + nwarps - 1)/nwarps, p.n_hkv, ns);
        if (p.s_f16) {
            radar_score_summary_gqa<D, half> <<<grid, RADAR_SCORE_NTHREADS, 0, stream>>>(p);
        } else {
            radar_score_summary_gqa<D, float><<<grid, RADAR_SCORE_NTHREADS, 0, stream>>>(p);
        }
    } else {
        GGML_ASSERT(p.score == GGML_RADAR_SCORE_RF);
        radar_rf_query<<<dim3(p.n_hq, ns), RADAR_SCORE_NTHREADS, 0, stream>>>(p, D);
        const dim3 grid((n_seg_max + RADAR_SCORE_SEGS - 1)/RADAR_SCORE_SEGS, p.n_hq, ns);
        if (p.s_f16) {
            radar_score_rf<half> <<<grid, RADAR_SCORE_NTHREADS, 0, stream>>>(p);
        } else {
            radar_score_rf<float><<<grid, RADAR_SCORE_NTHREADS, 0, stream>>>(p);
        }
    }
}

void radar_score_select_launch(const int D, const ggml_type type_K, const ggml_type type_V, const radar_attn_params & p, const bool score_gqa,
        const int ns, cudaStream_t stream) {
    switch (D) {
        case  64: radar_score_launch_D< 64>(type_K, p, score_gqa, ns, stream); break;
        case 128: radar_score_launch_D<128>(type_K, p, score_gqa, ns, stream); break;
        case 256: radar_score_launch_D<256>(type_K, p, score_gqa, ns, stream); break;
        default: GGML_ABORT("fatal error");
    }
    const int    n_items = p.shared ? p.n_hkv : p.n_hq;
    const size_t smem    = p.select_smem ? p.n_seg_cap*sizeof(uint32_t) : 0;
    const dim3   grid(n_items, ns);
    if (p.n_rescore > 0) {
        // two stages: the n_rescore best by score, their exact scores, the top_k best of them by those
        radar_select<<<grid, RADAR_SELECT_NTHREADS, smem, stream>>>(
            p, p.scores, p.n_seg_cap, nullptr, p.cand, p.n_rescore + 1, p.n_rescore, false);
        switch (D) {
            case  64: radar_rescore_launch_D< 64>(type_K, type_V, p, ns, stream); break;
            case 128: radar_rescore_launch_D<128>(type_K, type_V, p, ns, stream); break;
            case 256: radar_rescore_launch_D<256>(type_K, type_V, p, ns, stream); break;
            default: GGML_ABORT("fatal error");
        }
        if (p.mass > 0.0f) {
            int n_pow2 = 1;
            while (n_pow2 < p.n_rescore) {
                n_pow2 *= 2;
            }
            const size_t smem_mass = n_pow2*sizeof(uint64_t) + 2*p.n_rescore*sizeof(float);
            switch (D) {
                case  64: radar_select_mass< 64><<<grid, RADAR_SELECT_NTHREADS, smem_mass, stream>>>(p, n_pow2); break;
                case 128: radar_select_mass<128><<<grid, RADAR_SELECT_NTHREADS, smem_mass, stream>>>(p, n_pow2); break;
                case 256: radar_select_mass<256><<<grid, RADAR_SELECT_NTHREADS, smem_mass, stream>>>(p, n_pow2); break;
                default: GGML_ABORT("fatal error");
            }
        } else if (!p.select_in_attn) {
            radar_select<<<grid, RADAR_SELECT_NTHREADS, smem, stream>>>(
                p, p.exact, p.n_rescore, p.cand, p.sel, p.n_seg_cap + 1, p.top_k, true);
        }
    } else if (!p.select_in_attn) {
        radar_select<<<grid, RADAR_SELECT_NTHREADS, smem, stream>>>(
            p, p.scores, p.n_seg_cap, nullptr, p.sel, p.n_seg_cap + 1, p.top_k, true);
    }
}

#endif // RADAR_CUDA_AVAILABLE
