// Radar sparse decode attention: the Metal kernels of GGML_OP_RADAR_SUMMARIZE and GGML_OP_RADAR_ATTN.
// The semantics are those of the CPU kernels in ggml-cpu/radar.cpp (docs/radar-ops.md in radar_gguf); the
// launch plan (which kernels run, grids, scratch) is ggml_metal_radar_attn_make_plan in ggml-metal-radar.h.
//
// Kernel inputs use ggml's tensor layouts ([ne0, ne1, ne2, ne3], rows addressed by byte strides nb*):
//   K row types: float (f32), half (f16), block_q8_0 (q8_0); summaries: float or half.
// Scores and softmax are computed in f32; the query enters the KQ dot products in K's vec-dot type, as the
// CPU kernel converts it (f32 as is, f16 rounded, q8_0 quantized), so that the logits agree closely.
//
// Metal compiles with fast math, which does not honour infinities: as in the flash-attention kernels, a
// finite floor RADAR_NEG stands for the contract's -INF (the score of an empty segment, the logit of a masked
// cell, the log of no mass; "x <= RADAR_NEG" tests for it), and masked cells (-INF in the KQ mask) are told
// by their bits.
#include "common.h"

#define RADAR_SCORE_RF      0
#define RADAR_SCORE_MEAN    1
#define RADAR_SCORE_MEANVAR 2
#define RADAR_SCORE_MINMAX  3
#define RADAR_SCORE_ORACLE  4
#define RADAR_SCORE_UNION   5

#define RADAR_NEG (-FLT_MAX/2)

// element i of a K or V row as float
static inline float radar_val(device const float * row, int i) {
    return row[i];
}

static inline float radar_val(device const half * row, int i) {
    return (float) row[i];
}

static inline float radar_val(device const block_q8_0 * row, int i) {
    return (float) row[i/QK8_0].d * (float) row[i/QK8_0].qs[i%QK8_0];
}

// the query of one head into threadgroup memory in K's vec-dot type: qs [D] (the rounded values; for
// q8_0 the integer quants) and, for q8_0, the block scales [D/32] after them. Whole threadgroup; the
// caller synchronizes.
static inline void radar_load_q(threadgroup float * qs, device const float * q, int D, ushort sgitg, ushort nsg, ushort tiisg,
        device const float * tag) {
    for (int i = sgitg*N_SIMDWIDTH + tiisg; i < D; i += nsg*N_SIMDWIDTH) {
        qs[i] = q[i];
    }
}

static inline void radar_load_q(threadgroup float * qs, device const float * q, int D, ushort sgitg, ushort nsg, ushort tiisg,
        device const half * tag) {
    for (int i = sgitg*N_SIMDWIDTH + tiisg; i < D; i += nsg*N_SIMDWIDTH) {
        qs[i] = (float) (half) q[i];
    }
}

// quantize_row_q8_0_ref: one simdgroup per block of 32
static inline void radar_load_q(threadgroup float * qs, device const float * q, int D, ushort sgitg, ushort nsg, ushort tiisg,
        device const block_q8_0 * tag) {
    for (int ib = sgitg; ib < D/QK8_0; ib += nsg) {
        const float x    = q[ib*QK8_0 + tiisg];
        const float amax = simd_max(fabs(x));
        const float d    = amax/127.0f;
        const float id   = d != 0.0f ? 1.0f/d : 0.0f;
        qs[ib*QK8_0 + tiisg] = round(x*id);
        if (tiisg == 0) {
            qs[D + ib] = (float) (half) d;
        }
    }
}

// q.k of one K row, by one thread (each lane of a simdgroup takes its own cell)
static inline float radar_dot(threadgroup const float * qs, device const float * row, int D) {
    float s = 0.0f;
    for (int i = 0; i < D; ++i) {
        s += qs[i]*row[i];
    }
    return s;
}

static inline float radar_dot(threadgroup const float * qs, device const half * row, int D) {
    float s = 0.0f;
    for (int i = 0; i < D; ++i) {
        s += qs[i]*(float) row[i];
    }
    return s;
}

// like ggml_vec_dot_q8_0_q8_0: an integer sum per block, then times both scales
static inline float radar_dot(threadgroup const float * qs, device const block_q8_0 * row, int D) {
    float s = 0.0f;
    for (int ib = 0; ib < D/QK8_0; ++ib) {
        int si = 0;
        for (int i = 0; i < QK8_0; ++i) {
            si += (int) qs[ib*QK8_0 + i]*(int) row[ib].qs[i];
        }
        s += (float) si*((float) row[ib].d*qs[D + ib]);
    }
    return s;
}

// the KQ mask value of cell c; false for a masked cell (-INF, recognised by its bits)
static inline bool radar_mask(device const char * mrow, int c, int mask_f16, thread float & mv) {
    if (mask_f16) {
        const half h = ((device const half *) mrow)[c];
        mv = (float) h;
        return as_type<ushort>(h) != 0xfc00;
    }
    mv = ((device const float *) mrow)[c];
    return as_type<uint>(mv) != 0xff800000u;
}

// log-add b into a (either may be RADAR_NEG)
static inline float radar_log_add(float a, float b) {
    const float hi = max(a, b);
    return hi <= RADAR_NEG ? RADAR_NEG : hi + log(1.0f + exp(min(a, b) - hi));
}

// the ALiBi slope of query head h, as ggml's soft_max (1 without max_bias)
static inline float radar_slope(constant ggml_metal_kargs_radar_attn & args, int h) {
    if (args.max_bias <= 0.0f) {
        return 1.0f;
    }
    return h < (int) args.n_head_log2 ? pow(args.m0, (float) (h + 1)) : pow(args.m1, (float) (2*(h - (int) args.n_head_log2) + 1));
}

// n_seg (complete, summarized segments) and n_cand (those that are not recent) of stream st
static inline void radar_counts(constant ggml_metal_kargs_radar_attn & args, device const char * info, int st,
        thread int & n_seg, thread int & n_cand) {
    const int n_seg_in = *((device const int32_t *) (info + st*args.nbi1));
    n_seg  = max(0, min(n_seg_in, min(args.n_kv/args.L, args.n_seg_cap)));
    n_cand = n_seg - min(n_seg, (args.n_recent + args.L - 1)/args.L);
}

// the attention logit of cell c (RADAR_NEG when masked), by one thread
template<typename TK>
static inline float radar_logit(constant ggml_metal_kargs_radar_attn & args, threadgroup const float * qs,
        device const char * k, device const char * mrow, float slope, int c, int hk, int st) {
    float mv;
    if (!radar_mask(mrow, c, args.mask_f16, mv)) {
        return RADAR_NEG;
    }
    float r = radar_dot(qs, (device const TK *) (k + c*args.nbk1 + hk*args.nbk2 + st*args.nbk3), args.D)*args.kq_scale;
    if (args.softcap != 0.0f) {
        r = args.softcap*tanh(r);
    }
    return r + slope*mv;
}

// log of the exact attention mass of cells [c0, c1) (RADAR_NEG when all are masked), by one simdgroup: a
// lane per cell, the result in every lane
template<typename TK>
static inline float radar_cells_lse(constant ggml_metal_kargs_radar_attn & args, threadgroup const float * qs,
        device const char * k, device const char * mrow, float slope, int c0, int c1, int hk, int st, ushort tiisg) {
    float mx  = RADAR_NEG;
    float sum = 0.0f;
    for (int cb = c0; cb < c1; cb += N_SIMDWIDTH) {
        const int   c  = cb + tiisg;
        const float l  = c < c1 ? radar_logit<TK>(args, qs, k, mrow, slope, c, hk, st) : RADAR_NEG;
        const float mt = simd_max(l);
        if (mt <= RADAR_NEG) {
            continue;
        }
        const float mn = max(mx, mt);
        sum = sum*exp(mx - mn) + simd_sum(l <= RADAR_NEG ? 0.0f : exp(l - mn));
        mx  = mn;
    }
    return mx <= RADAR_NEG ? RADAR_NEG : mx + log(sum);
}

// reductions over the threadgroup through one slot per simdgroup (red: [nsg]); every thread gets the result
static inline float radar_tg_max(float x, threadgroup float * red, ushort sgitg, ushort tiisg, ushort nsg) {
    x = simd_max(x);
    threadgroup_barrier(mem_flags::mem_threadgroup); // red may still be read by a previous reduction
    if (tiisg == 0) {
        red[sgitg] = x;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float r = red[0];
    for (int i = 1; i < nsg; ++i) {
        r = max(r, red[i]);
    }
    return r;
}

static inline float radar_tg_sum(float x, threadgroup float * red, ushort sgitg, ushort tiisg, ushort nsg) {
    x = simd_sum(x);
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (tiisg == 0) {
        red[sgitg] = x;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    float r = 0.0f;
    for (int i = 0; i < nsg; ++i) {
        r += red[i];
    }
    return r;
}

// summary values are stored as float or half; half saturates at +-65504 like the CPU kernel
static inline void radar_store(device float * row, int i, float x) {
    row[i] = x;
}

static inline void radar_store(device half * row, int i, float x) {
    row[i] = (half) (x > 65504.0f ? 65504.0f : (x < -65504.0f ? -65504.0f : x));
}

static inline float radar_load(device const float * row, int i) {
    return row[i];
}

static inline float radar_load(device const half * row, int i) {
    return (float) row[i];
}

//
// GGML_OP_RADAR_SUMMARIZE: one simdgroup per (listed segment, KV head, stream), grid (n_upd, Hkv, ns).
// Lane l owns channels l, l+32, ... (MEAN, MEANVAR, MINMAX: Welford mean and variance, or min and max, in
// f32; the CPU accumulates in f64, the difference is far below the f32 rounding of the row; UNION: both) and
// features l, l+32, ... of RF (running max and sum in threadgroup memory: [2m] each, after the key [D]).
//   k:     [D, Hkv, n_kv, ns]      TK rows
//   mask:  [n_kv, n_rows, 1, ns]   f16/f32, the last row gives validity
//   ids:   [n_upd, ns]             i32 segments to (re)compute, -1 = skip
//   omega: [D, m]                  f32 (RF)
//   s:     [W, Hkv, n_seg_cap, ns] TS, written in place
//
typedef void (radar_summarize_t)(
        constant ggml_metal_kargs_radar_summarize & args,
        device const char * k,
        device const char * mask,
        device const char * ids,
        device const char * omega,
        device       char * s,
        threadgroup  float * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]);

template<typename TK, typename TS>
kernel void kernel_radar_summarize(
        constant ggml_metal_kargs_radar_summarize & args,
        device const char * k,
        device const char * mask,
        device const char * ids,
        device const char * omega,
        device       char * s,
        threadgroup  float * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int iu = tgpig.x;
    const int h  = tgpig.y;
    const int st = tgpig.z;

    const int seg = *((device const int32_t *) (ids + iu*args.nbi0 + st*args.nbi1));
    if (seg < 0 || seg >= args.n_seg_cap) {
        return;
    }

    const int D     = args.D;
    const int m     = args.m;
    const int score = args.score;
    const int nd    = D/N_SIMDWIDTH;

    device const char * mrow = mask + args.nbm_row + st*args.nbm3;

    const int c0 = seg*args.L;
    const int c1 = min(c0 + args.L, args.n_kv);

    threadgroup float * kf   = shmem;      // [D] the key (RF)
    threadgroup float * fmax = kf + D;     // [2m] running max of the feature logs
    threadgroup float * fsum = fmax + 2*m; // [2m] running sum of exp(f - max)

    const bool both = score == RADAR_SCORE_UNION; // MEANVAR's mean and variance, then MINMAX's min and max

    float a0[RADAR_METAL_D_MAX/N_SIMDWIDTH]; // mean or min
    float a1[RADAR_METAL_D_MAX/N_SIMDWIDTH]; // sum of squared deviations or max
    float a2[RADAR_METAL_D_MAX/N_SIMDWIDTH]; // UNION: min
    float a3[RADAR_METAL_D_MAX/N_SIMDWIDTH]; // UNION: max
    for (int i = 0; i < nd; ++i) {
        a0[i] = score == RADAR_SCORE_MINMAX ?  FLT_MAX : 0.0f;
        a1[i] = score == RADAR_SCORE_MINMAX ? -FLT_MAX : 0.0f;
        a2[i] =  FLT_MAX;
        a3[i] = -FLT_MAX;
    }
    if (score == RADAR_SCORE_RF) {
        for (int j = tiisg; j < 2*m; j += N_SIMDWIDTH) {
            fmax[j] = RADAR_NEG;
            fsum[j] = 0.0f;
        }
    }

    const float xs = sqrt(args.scale); // random features approximate exp(x_q.x_k) with x = v*sqrt(scale)

    int n = 0;
    for (int c = c0; c < c1; ++c) {
        float mv;
        if (!radar_mask(mrow, c, args.mask_f16, mv)) {
            continue; // the same cell for every lane: uniform
        }
        device const TK * kr = (device const TK *) (k + h*args.nbk1 + c*args.nbk2 + st*args.nbk3);
        n++;
        if (score == RADAR_SCORE_MEAN || score == RADAR_SCORE_MEANVAR || both) {
            for (int i = 0; i < nd; ++i) {
                const float x     = radar_val(kr, tiisg + i*N_SIMDWIDTH);
                const float delta = x - a0[i];
                a0[i] += delta/n;
                a1[i] += delta*(x - a0[i]);
                if (both) {
                    a2[i] = min(a2[i], x);
                    a3[i] = max(a3[i], x);
                }
            }
        } else if (score == RADAR_SCORE_MINMAX) {
            for (int i = 0; i < nd; ++i) {
                const float x = radar_val(kr, tiisg + i*N_SIMDWIDTH);
                a0[i] = min(a0[i], x);
                a1[i] = max(a1[i], x);
            }
        } else if (score == RADAR_SCORE_RF) {
            float nx2 = 0.0f;
            for (int i = 0; i < nd; ++i) {
                const float x = radar_val(kr, tiisg + i*N_SIMDWIDTH);
                kf[tiisg + i*N_SIMDWIDTH] = x;
                nx2 += x*x;
            }
            nx2 = simd_sum(nx2);
            threadgroup_barrier(mem_flags::mem_threadgroup);
            const float hn = 0.5f*nx2*args.scale;
            for (int j = tiisg; j < m; j += N_SIMDWIDTH) {
                device const float * w = (device const float *) (omega + j*args.nbo1); // omega column j
                float wx = 0.0f;
                for (int d = 0; d < D; ++d) {
                    wx += w[d]*kf[d];
                }
                for (int sgn = 0; sgn < 2; ++sgn) {
                    const int   jj = j + sgn*m;
                    const float f  = (sgn == 0 ? wx : -wx)*xs - hn;
                    if (f > fmax[jj]) {
                        fsum[jj] = fsum[jj]*exp(fmax[jj] - f) + 1.0f;
                        fmax[jj] = f;
                    } else {
                        fsum[jj] += exp(f - fmax[jj]);
                    }
                }
            }
            threadgroup_barrier(mem_flags::mem_threadgroup); // kf is overwritten by the next cell
        }
    }

    device TS * out = (device TS *) (s + h*args.nbs1 + seg*args.nbs2 + st*args.nbs3);
    if (n == 0 || score == RADAR_SCORE_ORACLE) {
        // a segment without valid cells is all zeros (and scores RADAR_NEG); ORACLE keeps only n
        for (int i = tiisg; i < args.W - 1; i += N_SIMDWIDTH) {
            radar_store(out, i, 0.0f);
        }
    } else if (score == RADAR_SCORE_MEAN || score == RADAR_SCORE_MEANVAR || both) {
        for (int i = 0; i < nd; ++i) {
            radar_store(out, tiisg + i*N_SIMDWIDTH,     a0[i]);
            radar_store(out, D + tiisg + i*N_SIMDWIDTH, max(a1[i]/n, 0.0f));
            if (both) {
                radar_store(out, 2*D + tiisg + i*N_SIMDWIDTH, a2[i]);
                radar_store(out, 3*D + tiisg + i*N_SIMDWIDTH, a3[i]);
            }
        }
    } else if (score == RADAR_SCORE_MINMAX) {
        for (int i = 0; i < nd; ++i) {
            radar_store(out, tiisg + i*N_SIMDWIDTH,     a0[i]);
            radar_store(out, D + tiisg + i*N_SIMDWIDTH, a1[i]);
        }
    } else {
        const float log_n = log((float) n);
        for (int j = tiisg; j < 2*m; j += N_SIMDWIDTH) {
            radar_store(out, j, fmax[j] + log(fsum[j]) - log_n);
        }
    }
    if (tiisg == 0) {
        radar_store(out, args.W - 1, (float) n);
    }
}

template [[host_name("kernel_radar_summarize_f32_f32")]]  kernel radar_summarize_t kernel_radar_summarize<float,      float>;
template [[host_name("kernel_radar_summarize_f32_f16")]]  kernel radar_summarize_t kernel_radar_summarize<float,      half>;
template [[host_name("kernel_radar_summarize_f16_f32")]]  kernel radar_summarize_t kernel_radar_summarize<half,       float>;
template [[host_name("kernel_radar_summarize_f16_f16")]]  kernel radar_summarize_t kernel_radar_summarize<half,       half>;
template [[host_name("kernel_radar_summarize_q8_0_f32")]] kernel radar_summarize_t kernel_radar_summarize<block_q8_0, float>;
template [[host_name("kernel_radar_summarize_q8_0_f16")]] kernel radar_summarize_t kernel_radar_summarize<block_q8_0, half>;

//
// GGML_OP_RADAR_ATTN. The inputs of every kernel below:
//   q:     [D, 1, Hq, ns]          f32
//   k:     [D, n_kv, Hkv, ns]      TK rows (the permuted cache view)
//   v:     [D, n_kv, Hkv, ns]      TV rows
//   mask:  [n_kv, >=1, 1, ns]      f16/f32, row 0
//   s:     [W, Hkv, n_seg_cap, ns] TS summaries
//   info:  [2, ns]                 i32, info[0] = n_seg
//   omega: [D, m]                  f32 (RF)
//   sinks: [Hq]                    f32 (optional)
// and the scratch of the plan: scores [ns, Hq, n_seg_cap], lq [ns, Hq, 2m], sel [ns, n_items, 1 + n_seg_cap],
// cand [ns, n_items, 1 + n_rescore], exact [ns, Hq, n_rescore], parts [ns, Hq, n_split, D + 2].
//

// RF: the feature logs of each query head, grid (Hq, ns), one simdgroup
kernel void kernel_radar_rf_query(
        constant ggml_metal_kargs_radar_attn & args,
        device const char  * q,
        device const char  * omega,
        device       float * lq,
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int h  = tgpig.x;
    const int st = tgpig.y;
    const int D  = args.D;
    const int m  = args.m;

    device const float * qf = (device const float *) (q + h*args.nbq2 + st*args.nbq3);

    float nx2 = 0.0f;
    for (int d = tiisg; d < D; d += N_SIMDWIDTH) {
        nx2 += qf[d]*qf[d];
    }
    nx2 = simd_sum(nx2);

    const float hn = 0.5f*nx2*args.scale;
    const float xs = sqrt(args.scale);

    device float * out = lq + (st*args.n_hq + h)*2*m;
    for (int j = tiisg; j < m; j += N_SIMDWIDTH) {
        device const float * w = (device const float *) (omega + j*args.nbo1);
        float wx = 0.0f;
        for (int d = 0; d < D; ++d) {
            wx += w[d]*qf[d];
        }
        out[j]     =  wx*xs - hn;
        out[j + m] = -wx*xs - hn;
    }
}

// segment scores of the candidates, one simdgroup per segment, grid (ceil(n_seg_cap/nsg), Hq, ns).
// MEAN, MEANVAR, MINMAX, RF read the summaries; ORACLE the keys (threadgroup memory: the query [D + D/32]).
// UNION: MEANVAR's score into scores, MINMAX's args.n_scores_b floats further on.
typedef void (radar_score_t)(
        constant ggml_metal_kargs_radar_attn & args,
        device const char  * q,
        device const char  * k,
        device const char  * mask,
        device const char  * s,
        device const char  * info,
        device const float * lq,
        device       float * scores,
        threadgroup  float * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]);

template<typename TK, typename TS>
kernel void kernel_radar_score(
        constant ggml_metal_kargs_radar_attn & args,
        device const char  * q,
        device const char  * k,
        device const char  * mask,
        device const char  * s,
        device const char  * info,
        device const float * lq,
        device       float * scores,
        threadgroup  float * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]) {
    const int h  = tgpig.y;
    const int st = tgpig.z;
    const int hk = h/args.gqa;
    const int D  = args.D;

    int n_seg, n_cand;
    radar_counts(args, info, st, n_seg, n_cand);
    if (n_cand <= args.top_k) {
        return; // everything is kept: no scores needed (uniform over the threadgroup)
    }

    device const float * qf = (device const float *) (q + h*args.nbq2 + st*args.nbq3);
    if (args.score == RADAR_SCORE_ORACLE) {
        radar_load_q(shmem, qf, D, sgitg, nsg, tiisg, (device const TK *) k);
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    const int sg = tgpig.x*nsg + sgitg;
    if (sg >= n_cand) {
        return; // no threadgroup barrier follows
    }

    float r;
    float rb = RADAR_NEG; // UNION: MINMAX's score
    if (args.score == RADAR_SCORE_ORACLE) {
        device const char * mrow = mask + st*args.nbm3;
        r = radar_cells_lse<TK>(args, shmem, k, mrow, radar_slope(args, h), sg*args.L, (sg + 1)*args.L, hk, st, tiisg);
    } else {
        device const TS * row = (device const TS *) (s + hk*args.nbs1 + sg*args.nbs2 + st*args.nbs3);
        if (!(radar_load(row, args.W - 1) > 0.0f)) {
            r = RADAR_NEG; // no valid cell
        } else if (args.score == RADAR_SCORE_RF) {
            device const float * lqh = lq + (st*args.n_hq + h)*2*args.m;
            float mx = RADAR_NEG;
            for (int j = tiisg; j < 2*args.m; j += N_SIMDWIDTH) {
                mx = max(mx, lqh[j] + radar_load(row, j));
            }
            mx = simd_max(mx);
            float sum = 0.0f;
            for (int j = tiisg; j < 2*args.m; j += N_SIMDWIDTH) {
                sum += exp(lqh[j] + radar_load(row, j) - mx);
            }
            r = mx + log(simd_sum(sum));
        } else {
            const bool both = args.score == RADAR_SCORE_UNION;
            float a = 0.0f;
            float b = 0.0f;
            float c = 0.0f; // UNION: the bound
            for (int d = tiisg; d < D; d += N_SIMDWIDTH) {
                const float qd = qf[d];
                if (args.score == RADAR_SCORE_MINMAX) {
                    a += max(qd*radar_load(row, d), qd*radar_load(row, D + d)); // Quest upper bound
                } else {
                    a += qd*radar_load(row, d);
                    b += qd*qd*radar_load(row, D + d);
                    if (both) {
                        c += max(qd*radar_load(row, 2*D + d), qd*radar_load(row, 3*D + d));
                    }
                }
            }
            a = simd_sum(a);
            b = simd_sum(b);
            r = args.scale*a;
            if (args.score == RADAR_SCORE_MEANVAR || both) {
                r += 0.5f*args.scale*args.scale*b; // log-mean-exp of a Gaussian
            }
            if (both) {
                rb = args.scale*simd_sum(c);
            }
        }
    }
    if (tiisg == 0) {
        const int o = (st*args.n_hq + h)*args.n_seg_cap + sg;
        scores[o] = isnan(r) ? RADAR_NEG : max(r, RADAR_NEG);
        if (args.score == RADAR_SCORE_UNION) {
            scores[args.n_scores_b + o] = isnan(rb) ? RADAR_NEG : max(rb, RADAR_NEG);
        }
    }
}

template [[host_name("kernel_radar_score_f32_f32")]]  kernel radar_score_t kernel_radar_score<float,      float>;
template [[host_name("kernel_radar_score_f32_f16")]]  kernel radar_score_t kernel_radar_score<float,      half>;
template [[host_name("kernel_radar_score_f16_f32")]]  kernel radar_score_t kernel_radar_score<half,       float>;
template [[host_name("kernel_radar_score_f16_f16")]]  kernel radar_score_t kernel_radar_score<half,       half>;
template [[host_name("kernel_radar_score_q8_0_f32")]] kernel radar_score_t kernel_radar_score<block_q8_0, float>;
template [[host_name("kernel_radar_score_q8_0_f16")]] kernel radar_score_t kernel_radar_score<block_q8_0, half>;

// the rank of value i among val [n], best first, counted up to k: ties go to the lower id (the segment, ids[i]
// with has_ids, else i), a strict total order, so the kept set is that of the CPU's nth_element.
// O(n) per value, O(n^2/threads) per selection: n is at most RADAR_METAL_SEL_MAX.
template<bool has_ids>
static inline int radar_rank(threadgroup const float * val, threadgroup const int32_t * ids, int n, int i, int k) {
    const float vi = val[i];
    const int   ii = has_ids ? ids[i] : i;
    int rank = 0;
    for (int j = 0; j < n && rank < k; ++j) {
        const float vj = val[j];
        const int   ij = has_ids ? ids[j] : j;
        rank += vj > vi || (vj == vi && ij < ii);
    }
    return rank;
}

// the ids of the k best values into out[rank]
template<bool has_ids>
static inline void radar_rank_keep(threadgroup const float * val, threadgroup const int32_t * ids, int n, int k,
        device int32_t * out, ushort tid, ushort nth) {
    for (int i = tid; i < n; i += nth) {
        const int rank = radar_rank<has_ids>(val, ids, n, i, k);
        if (rank < k) {
            out[rank] = has_ids ? ids[i] : i;
        }
    }
}

// sel of a stream that keeps every segment: [n_seg, 0, 1, ..., n_seg-1]
static inline void radar_keep_all(device int32_t * sel, int n_seg, ushort tid, ushort nth) {
    if (tid == 0) {
        sel[0] = n_seg;
    }
    for (int i = tid; i < n_seg; i += nth) {
        sel[1 + i] = i;
    }
}

// the recent segments [n_cand, n_seg) after the n_keep kept candidates, and the count
static inline void radar_keep_recent(device int32_t * sel, int n_keep, int n_cand, int n_seg, ushort tid, ushort nth) {
    if (tid == 0) {
        sel[0] = n_keep + n_seg - n_cand;
    }
    for (int i = tid; i < n_seg - n_cand; i += nth) {
        sel[1 + n_keep + i] = n_cand + i;
    }
}

// the values stage one ranks, val[i] for the candidates i < n_cand of item: the item's scores (a query
// head), or with a shared selection the group's summed attention share, logsumexp_h (score_h - logsumexp
// score_h) (a KV head). Lane tid writes the values i = tid (mod nth)
static inline void radar_select_values(constant ggml_metal_kargs_radar_attn & args, device const float * scores,
        int item, int st, int n_cand, threadgroup float * val, threadgroup float * red,
        ushort tid, ushort nth, ushort sgitg, ushort tiisg, ushort nsg) {
    if (!args.shared) {
        device const float * sc = scores + (st*args.n_hq + item)*args.n_seg_cap;
        for (int i = tid; i < n_cand; i += nth) {
            val[i] = sc[i];
        }
        return;
    }
    for (int i = tid; i < n_cand; i += nth) {
        val[i] = RADAR_NEG;
    }
    for (int g = 0; g < args.gqa; ++g) {
        device const float * sc = scores + (st*args.n_hq + item*args.gqa + g)*args.n_seg_cap;
        float mx = RADAR_NEG;
        for (int i = tid; i < n_cand; i += nth) {
            mx = max(mx, sc[i]);
        }
        mx = radar_tg_max(mx, red, sgitg, tiisg, nsg);
        if (mx <= RADAR_NEG) {
            continue; // uniform
        }
        float sum = 0.0f;
        for (int i = tid; i < n_cand; i += nth) {
            sum += exp(sc[i] - mx);
        }
        const float lse = mx + log(radar_tg_sum(sum, red, sgitg, tiisg, nsg));
        for (int i = tid; i < n_cand; i += nth) {
            val[i] = radar_log_add(val[i], sc[i] - lse);
        }
    }
}

// stage one of the selection, one threadgroup per (item, stream): item = query head, or KV head with a
// shared selection (the group's summed attention share, logsumexp_h (score_h - logsumexp score_h)).
// One stage: the top_k candidates and the recent segments into sel. Two stages: the min(n_rescore, n_cand)
// best candidates into cand (count -1: the stream has at most top_k candidates and keeps all).
// UNION: of those n, the best (n + 1)/2 by MEANVAR's scores, then the best of the others by MINMAX's.
// Threadgroup memory: the values [n_seg_cap] (UNION: MEANVAR's, then MINMAX's [n_seg_cap]), then 2 slots
// per simdgroup.
kernel void kernel_radar_select(
        constant ggml_metal_kargs_radar_attn & args,
        device const char    * info,
        device const float   * scores,
        device       int32_t * sel,
        device       int32_t * cand,
        threadgroup  float   * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tid   [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]) {
    const int item    = tgpig.x;
    const int st      = tgpig.y;
    const int n_items = args.shared ? args.n_hkv : args.n_hq;
    const ushort nth  = nsg*N_SIMDWIDTH;

    int n_seg, n_cand;
    radar_counts(args, info, st, n_seg, n_cand);

    const bool two = args.n_rescore > 0;
    device int32_t * out = two ? cand + (st*n_items + item)*(1 + args.n_rescore) : sel + (st*n_items + item)*(1 + args.n_seg_cap);
    if (n_cand <= args.top_k) {
        if (two) {
            if (tid == 0) {
                out[0] = -1;
            }
        } else {
            radar_keep_all(out, n_seg, tid, nth);
        }
        return;
    }

    const bool both = args.score == RADAR_SCORE_UNION;
    threadgroup float * val   = shmem;                                        // [n_seg_cap]
    threadgroup float * val_b = val + args.n_seg_cap;                         // [n_seg_cap] UNION: MINMAX's
    threadgroup float * red   = val + (both ? 2 : 1)*args.n_seg_cap;          // [nsg]

    radar_select_values(args, scores, item, st, n_cand, val, red, tid, nth, sgitg, tiisg, nsg);
    if (both) {
        radar_select_values(args, scores + args.n_scores_b, item, st, n_cand, val_b, red, tid, nth, sgitg, tiisg, nsg);
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    const int n = two ? min(args.n_rescore, n_cand) : args.top_k; // kept by stage one
    if (!both) {
        radar_rank_keep<false>(val, (threadgroup const int32_t *) val, n_cand, n, out + 1, tid, nth);
    } else {
        // the best n_a by MEANVAR into out[1 + rank]; their MINMAX values drop below any score (RADAR_NEG is
        // the floor of a score), so that the best n - n_a of the others by MINMAX follow them (n < n_cand)
        const int n_a = (n + 1)/2;
        for (int i = tid; i < n_cand; i += nth) {
            const int rank = radar_rank<false>(val, (threadgroup const int32_t *) val, n_cand, i, n_a);
            if (rank < n_a) {
                out[1 + rank] = i;
                val_b[i] = -FLT_MAX;
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        radar_rank_keep<false>(val_b, (threadgroup const int32_t *) val_b, n_cand, n - n_a, out + 1 + n_a, tid, nth);
    }
    if (two) {
        if (tid == 0) {
            out[0] = n;
        }
    } else {
        radar_keep_recent(out, args.top_k, n_cand, n_seg, tid, nth);
    }
}

// stage two: the exact score of each candidate of stage one, logsumexp of the logits of its cells past the
// sinks, one simdgroup per candidate, grid (ceil(n_rescore/nsg), Hq, ns). Threadgroup memory: the query.
typedef void (radar_rescore_t)(
        constant ggml_metal_kargs_radar_attn & args,
        device const char    * q,
        device const char    * k,
        device const char    * mask,
        device const int32_t * cand,
        device       float   * exact,
        threadgroup  float   * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]);

template<typename TK>
kernel void kernel_radar_rescore(
        constant ggml_metal_kargs_radar_attn & args,
        device const char    * q,
        device const char    * k,
        device const char    * mask,
        device const int32_t * cand,
        device       float   * exact,
        threadgroup  float   * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]) {
    const int h       = tgpig.y;
    const int st      = tgpig.z;
    const int hk      = h/args.gqa;
    const int n_items = args.shared ? args.n_hkv : args.n_hq;
    const int item    = args.shared ? hk : h;

    device const int32_t * cl = cand + (st*n_items + item)*(1 + args.n_rescore);
    const int n_c = cl[0];
    if (n_c <= 0) {
        return; // uniform
    }

    radar_load_q(shmem, (device const float *) (q + h*args.nbq2 + st*args.nbq3), args.D, sgitg, nsg, tiisg, (device const TK *) k);
    threadgroup_barrier(mem_flags::mem_threadgroup);

    const int i = tgpig.x*nsg + sgitg;
    if (i >= n_c) {
        return;
    }
    const int sg = cl[1 + i];
    const float r = radar_cells_lse<TK>(args, shmem, k, mask + st*args.nbm3, radar_slope(args, h),
            max(sg*args.L, args.n_sink), (sg + 1)*args.L, hk, st, tiisg);
    if (tiisg == 0) {
        exact[(st*args.n_hq + h)*args.n_rescore + i] = r;
    }
}

template [[host_name("kernel_radar_rescore_f32")]]  kernel radar_rescore_t kernel_radar_rescore<float>;
template [[host_name("kernel_radar_rescore_f16")]]  kernel radar_rescore_t kernel_radar_rescore<half>;
template [[host_name("kernel_radar_rescore_q8_0")]] kernel radar_rescore_t kernel_radar_rescore<block_q8_0>;

// stage two with a mass target: the log mass of the cells attended whatever the selection (the sinks, the
// recent segments and the tail: [0, sink_end) and [max(n_cand*L, sink_end), n_kv)) plus the sink logit, per
// query head, grid (Hq, ns); the simdgroups take every nsg-th tile of 32 cells. Threadgroup memory: the query
// [D + D/32], then (max, sum) per simdgroup.
typedef void (radar_always_t)(
        constant ggml_metal_kargs_radar_attn & args,
        device const char  * q,
        device const char  * k,
        device const char  * mask,
        device const char  * info,
        device const float * sinks,
        device       float * always,
        threadgroup  float * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]);

template<typename TK>
kernel void kernel_radar_always(
        constant ggml_metal_kargs_radar_attn & args,
        device const char  * q,
        device const char  * k,
        device const char  * mask,
        device const char  * info,
        device const float * sinks,
        device       float * always,
        threadgroup  float * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]) {
    const int h  = tgpig.x;
    const int st = tgpig.y;
    const int hk = h/args.gqa;
    const int D  = args.D;
    const int L  = args.L;

    int n_seg, n_cand;
    radar_counts(args, info, st, n_seg, n_cand);
    if (n_cand <= args.top_k) {
        return; // no selection in this stream (uniform)
    }

    threadgroup float * qs  = shmem;                // [D + D/32]
    threadgroup float * red = shmem + D + D/QK8_0;  // [2*nsg]

    radar_load_q(qs, (device const float *) (q + h*args.nbq2 + st*args.nbq3), D, sgitg, nsg, tiisg, (device const TK *) k);
    threadgroup_barrier(mem_flags::mem_threadgroup);

    const int sink_end = min(args.n_sink, n_seg*L);
    const int a0       = max(n_cand*L, sink_end);
    const int n_virt   = sink_end + (args.n_kv - a0);

    device const char * mrow  = mask + st*args.nbm3;
    const float         slope = radar_slope(args, h);

    float mx  = RADAR_NEG;
    float sum = 0.0f;
    for (int t = sgitg; t*N_SIMDWIDTH < n_virt; t += nsg) {
        const int   vi = t*N_SIMDWIDTH + tiisg;
        const int   c  = vi < sink_end ? vi : a0 + (vi - sink_end);
        const float l  = vi < n_virt ? radar_logit<TK>(args, qs, k, mrow, slope, c, hk, st) : RADAR_NEG;
        const float mt = simd_max(l);
        if (mt <= RADAR_NEG) {
            continue;
        }
        const float mn = max(mx, mt);
        sum = sum*exp(mx - mn) + simd_sum(l <= RADAR_NEG ? 0.0f : exp(l - mn));
        mx  = mn;
    }
    if (tiisg == 0) {
        red[2*sgitg + 0] = mx;
        red[2*sgitg + 1] = sum;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sgitg != 0 || tiisg != 0) {
        return;
    }
    float M = RADAR_NEG;
    for (int w = 0; w < nsg; ++w) {
        M = max(M, red[2*w]);
    }
    float S = 0.0f;
    for (int w = 0; w < nsg; ++w) {
        S += red[2*w] <= RADAR_NEG ? 0.0f : red[2*w + 1]*exp(red[2*w] - M);
    }
    float r = M <= RADAR_NEG ? RADAR_NEG : M + log(S);
    if (args.has_sinks) {
        r = radar_log_add(r, sinks[h]);
    }
    always[st*args.n_hq + h] = r;
}

template [[host_name("kernel_radar_always_f32")]]  kernel radar_always_t kernel_radar_always<float>;
template [[host_name("kernel_radar_always_f16")]]  kernel radar_always_t kernel_radar_always<half>;
template [[host_name("kernel_radar_always_q8_0")]] kernel radar_always_t kernel_radar_always<block_q8_0>;

// stage two, the choice: the top_k of the candidates by exact score (shared: the group's summed share over
// the candidates), ties to the lower segment index, then the recent segments, into sel. With a mass target
// (args.mass > 0) the shares are of all the mass known (the candidates and the always-attended cells, from
// kernel_radar_always), summed over the group; the candidates are ranked by share and kept from the best:
// top_k, then more while the kept share is below mass (mass*G shared), all of them at mass 1.
// One threadgroup per (item, stream). Threadgroup memory: the values [n_rescore], their segments [n_rescore],
// the order [n_rescore] (mass), 2 slots per simdgroup.
kernel void kernel_radar_select2(
        constant ggml_metal_kargs_radar_attn & args,
        device const char    * info,
        device const int32_t * cand,
        device const float   * exact,
        device const float   * always,
        device       int32_t * sel,
        threadgroup  float   * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tid   [[thread_index_in_threadgroup]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]) {
    const int item    = tgpig.x;
    const int st      = tgpig.y;
    const int n_items = args.shared ? args.n_hkv : args.n_hq;
    const ushort nth  = nsg*N_SIMDWIDTH;

    int n_seg, n_cand;
    radar_counts(args, info, st, n_seg, n_cand);

    device const int32_t * cl  = cand + (st*n_items + item)*(1 + args.n_rescore);
    device       int32_t * out = sel  + (st*n_items + item)*(1 + args.n_seg_cap);
    const int n_c = cl[0];
    if (n_c < 0) {
        radar_keep_all(out, n_seg, tid, nth);
        return;
    }

    threadgroup float   * val   = shmem;                                          // [n_rescore]
    threadgroup int32_t * ids   = (threadgroup int32_t *) (val + args.n_rescore);   // [n_rescore]
    threadgroup int32_t * order = ids + args.n_rescore;                             // [n_rescore]
    threadgroup float   * red   = (threadgroup float *) (order + args.n_rescore);   // [2*nsg]

    for (int i = tid; i < n_c; i += nth) {
        ids[i] = cl[1 + i];
    }
    if (args.mass > 0.0f) {
        for (int i = tid; i < n_c; i += nth) {
            val[i] = RADAR_NEG;
        }
        const int h0 = args.shared ? item*args.gqa : item;
        const int nh = args.shared ? args.gqa : 1;
        float known = RADAR_NEG; // log of the always-attended share, summed over the heads
        for (int g = 0; g < nh; ++g) {
            device const float * ex = exact + (st*args.n_hq + h0 + g)*args.n_rescore;
            const float al = always[st*args.n_hq + h0 + g];
            float mx = RADAR_NEG;
            for (int i = tid; i < n_c; i += nth) {
                mx = max(mx, ex[i]);
            }
            mx = radar_tg_max(mx, red, sgitg, tiisg, nsg);
            float lse = RADAR_NEG;
            if (mx > RADAR_NEG) {
                float sum = 0.0f;
                for (int i = tid; i < n_c; i += nth) {
                    sum += exp(ex[i] - mx);
                }
                lse = mx + log(radar_tg_sum(sum, red, sgitg, tiisg, nsg));
            }
            lse = radar_log_add(lse, al);
            if (lse <= RADAR_NEG) {
                continue; // no mass at all (uniform)
            }
            known = radar_log_add(known, al - lse);
            for (int i = tid; i < n_c; i += nth) {
                val[i] = radar_log_add(val[i], ex[i] - lse);
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        for (int i = tid; i < n_c; i += nth) {
            order[radar_rank<true>(val, ids, n_c, i, n_c)] = i;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        // best first: top_k, then more while the kept share is below the target (all of them at mass 1, which
        // rounding in the sums could otherwise cut short); one thread, n_c steps
        if (tid == 0) {
            const float target = log(args.mass*(float) nh);
            int n_keep = 0;
            for (int r = 0; r < n_c; ++r) {
                if (r >= args.top_k && args.mass < 1.0f && known >= target) {
                    break;
                }
                known  = radar_log_add(known, val[order[r]]);
                n_keep = r + 1;
            }
            ((threadgroup int32_t *) red)[0] = n_keep;
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        const int n_keep = ((threadgroup const int32_t *) red)[0];
        for (int r = tid; r < n_keep; r += nth) {
            out[1 + r] = ids[order[r]];
        }
        radar_keep_recent(out, n_keep, n_cand, n_seg, tid, nth);
        return;
    }
    if (!args.shared) {
        device const float * ex = exact + (st*args.n_hq + item)*args.n_rescore;
        for (int i = tid; i < n_c; i += nth) {
            val[i] = ex[i];
        }
    } else {
        for (int i = tid; i < n_c; i += nth) {
            val[i] = RADAR_NEG;
        }
        for (int g = 0; g < args.gqa; ++g) {
            device const float * ex = exact + (st*args.n_hq + item*args.gqa + g)*args.n_rescore;
            float mx = RADAR_NEG;
            for (int i = tid; i < n_c; i += nth) {
                mx = max(mx, ex[i]);
            }
            mx = radar_tg_max(mx, red, sgitg, tiisg, nsg);
            if (mx <= RADAR_NEG) {
                continue; // uniform
            }
            float sum = 0.0f;
            for (int i = tid; i < n_c; i += nth) {
                sum += exp(ex[i] - mx);
            }
            const float lse = mx + log(radar_tg_sum(sum, red, sgitg, tiisg, nsg));
            for (int i = tid; i < n_c; i += nth) {
                val[i] = radar_log_add(val[i], ex[i] - lse);
            }
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    radar_rank_keep<true>(val, ids, n_c, args.top_k, out + 1, tid, nth);
    radar_keep_recent(out, args.top_k, n_cand, n_seg, tid, nth);
}

// the split attention: threadgroup (split, h, st) takes every n_split-th tile of the attended cells of head h
// (sinks, kept segments, tail; every cell without a selection), a lane per cell for the logits, the lanes
// over channels for V; an online softmax per simdgroup, merged over the simdgroups into
// parts[st, h, split] = (unnormalized output [D], max, sum). Grid (n_split, Hq, ns).
// Threadgroup memory: the query [D + D/32], a tile's weights and cells per simdgroup [2*32*nsg], the
// simdgroups' results [nsg*(D + 2)].
typedef void (radar_attn_t)(
        constant ggml_metal_kargs_radar_attn & args,
        device const char    * q,
        device const char    * k,
        device const char    * v,
        device const char    * mask,
        device const char    * info,
        device const int32_t * sel,
        device       float   * parts,
        threadgroup  float   * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]);

template<typename TK, typename TV>
kernel void kernel_radar_attn(
        constant ggml_metal_kargs_radar_attn & args,
        device const char    * q,
        device const char    * k,
        device const char    * v,
        device const char    * mask,
        device const char    * info,
        device const int32_t * sel,
        device       float   * parts,
        threadgroup  float   * shmem [[threadgroup(0)]],
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort sgitg [[simdgroup_index_in_threadgroup]],
        ushort tiisg [[thread_index_in_simdgroup]],
        ushort nsg   [[simdgroups_per_threadgroup]]) {
    const int split = tgpig.x;
    const int h     = tgpig.y;
    const int st    = tgpig.z;
    const int hk    = h/args.gqa;
    const int D     = args.D;
    const int L     = args.L;
    const int nd    = D/N_SIMDWIDTH;

    threadgroup float   * qs = shmem;                                                     // [D + D/32]
    threadgroup float   * pw = qs + D + D/QK8_0 + sgitg*N_SIMDWIDTH;                      // [32] this simdgroup's weights
    threadgroup int32_t * pc = (threadgroup int32_t *) (qs + D + D/QK8_0 + nsg*N_SIMDWIDTH) + sgitg*N_SIMDWIDTH; // [32] cells
    threadgroup float   * pm = qs + D + D/QK8_0 + 2*nsg*N_SIMDWIDTH;                      // [nsg, D + 2]

    radar_load_q(qs, (device const float *) (q + h*args.nbq2 + st*args.nbq3), D, sgitg, nsg, tiisg, (device const TK *) k);
    threadgroup_barrier(mem_flags::mem_threadgroup);

    // the attended cells as one virtual range [0, n_virt): [0, sink_end), then the kept segments
    // (a segment's cells below sink_end are skipped: attended once), then the tail [n_seg*L, n_kv)
    int n_seg = 0, n_cand = 0, n_keep = 0, sink_end = 0, n_virt = args.n_kv;
    device const int32_t * kl = sel;
    if (args.select) {
        radar_counts(args, info, st, n_seg, n_cand);
        const int n_items = args.shared ? args.n_hkv : args.n_hq;
        kl       = sel + (st*n_items + (args.shared ? hk : h))*(1 + args.n_seg_cap);
        n_keep   = kl[0];
        sink_end = min(args.n_sink, n_seg*L);
        n_virt   = sink_end + n_keep*L + (args.n_kv - n_seg*L);
    }

    device const char * mrow  = mask + st*args.nbm3;
    const float         slope = radar_slope(args, h);

    float M = RADAR_NEG;
    float S = 0.0f;
    float acc[RADAR_METAL_D_MAX/N_SIMDWIDTH];
    for (int i = 0; i < nd; ++i) {
        acc[i] = 0.0f;
    }

    for (int t = split*nsg + sgitg; t*N_SIMDWIDTH < n_virt; t += args.n_split*nsg) {
        const int vi = t*N_SIMDWIDTH + tiisg;
        int c = -1;
        if (vi < n_virt) {
            if (!args.select || vi < sink_end) {
                c = vi;
            } else if (vi < sink_end + n_keep*L) {
                const int j = vi - sink_end;
                c = kl[1 + j/L]*L + j%L;
                c = c < sink_end ? -1 : c;
            } else {
                c = n_seg*L + (vi - sink_end - n_keep*L);
            }
        }
        const float l  = c >= 0 ? radar_logit<TK>(args, qs, k, mrow, slope, c, hk, st) : RADAR_NEG;
        const float mt = simd_max(l);
        if (mt <= RADAR_NEG) {
            continue; // uniform over the simdgroup
        }
        const float mn = max(M, mt);
        const float ms = exp(M - mn);
        const float p  = l <= RADAR_NEG ? 0.0f : exp(l - mn);
        S = S*ms + simd_sum(p);
        M = mn;
        for (int i = 0; i < nd; ++i) {
            acc[i] *= ms;
        }
        pw[tiisg] = p;
        pc[tiisg] = c;
        simdgroup_barrier(mem_flags::mem_threadgroup);
        for (int j = 0; j < N_SIMDWIDTH; ++j) {
            const float pj = pw[j];
            if (pj == 0.0f) {
                continue; // masked or past the range (uniform)
            }
            device const TV * vr = (device const TV *) (v + pc[j]*args.nbv1 + hk*args.nbv2 + st*args.nbv3);
            for (int i = 0; i < nd; ++i) {
                acc[i] += pj*radar_val(vr, tiisg + i*N_SIMDWIDTH);
            }
        }
        simdgroup_barrier(mem_flags::mem_threadgroup); // pw, pc are rewritten by the next tile
    }

    // merge the simdgroups
    threadgroup float * pms = pm + sgitg*(D + 2);
    for (int i = 0; i < nd; ++i) {
        pms[tiisg + i*N_SIMDWIDTH] = acc[i];
    }
    if (tiisg == 0) {
        pms[D]     = M;
        pms[D + 1] = S;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (sgitg != 0) {
        return;
    }
    float Mt = RADAR_NEG;
    for (int w = 0; w < nsg; ++w) {
        Mt = max(Mt, pm[w*(D + 2) + D]);
    }
    device float * out = parts + ((st*args.n_hq + h)*args.n_split + split)*(D + 2);
    float St = 0.0f;
    for (int i = 0; i < nd; ++i) {
        acc[i] = 0.0f;
    }
    for (int w = 0; w < nsg; ++w) {
        const float Mw = pm[w*(D + 2) + D];
        const float f  = Mw <= RADAR_NEG ? 0.0f : exp(Mw - Mt);
        St += f*pm[w*(D + 2) + D + 1];
        for (int i = 0; i < nd; ++i) {
            acc[i] += f*pm[w*(D + 2) + tiisg + i*N_SIMDWIDTH];
        }
    }
    for (int i = 0; i < nd; ++i) {
        out[tiisg + i*N_SIMDWIDTH] = acc[i];
    }
    if (tiisg == 0) {
        out[D]     = Mt;
        out[D + 1] = St;
    }
}

template [[host_name("kernel_radar_attn_f32_f32")]]   kernel radar_attn_t kernel_radar_attn<float,      float>;
template [[host_name("kernel_radar_attn_f32_f16")]]   kernel radar_attn_t kernel_radar_attn<float,      half>;
template [[host_name("kernel_radar_attn_f32_q8_0")]]  kernel radar_attn_t kernel_radar_attn<float,      block_q8_0>;
template [[host_name("kernel_radar_attn_f16_f32")]]   kernel radar_attn_t kernel_radar_attn<half,       float>;
template [[host_name("kernel_radar_attn_f16_f16")]]   kernel radar_attn_t kernel_radar_attn<half,       half>;
template [[host_name("kernel_radar_attn_f16_q8_0")]]  kernel radar_attn_t kernel_radar_attn<half,       block_q8_0>;
template [[host_name("kernel_radar_attn_q8_0_f32")]]  kernel radar_attn_t kernel_radar_attn<block_q8_0, float>;
template [[host_name("kernel_radar_attn_q8_0_f16")]]  kernel radar_attn_t kernel_radar_attn<block_q8_0, half>;
template [[host_name("kernel_radar_attn_q8_0_q8_0")]] kernel radar_attn_t kernel_radar_attn<block_q8_0, block_q8_0>;

// the merge of the splits of head h, the sink logit in the denominator, the normalization: dst [D, Hq, 1, ns].
// Grid (Hq, ns), one simdgroup; lane l owns channels l, l+32, ...
kernel void kernel_radar_attn_combine(
        constant ggml_metal_kargs_radar_attn & args,
        device const float * parts,
        device const float * sinks,
        device       char  * dst,
        uint3  tgpig [[threadgroup_position_in_grid]],
        ushort tiisg [[thread_index_in_simdgroup]]) {
    const int h  = tgpig.x;
    const int st = tgpig.y;
    const int D  = args.D;
    const int nd = D/N_SIMDWIDTH;

    device const float * pp = parts + (st*args.n_hq + h)*args.n_split*(D + 2);

    float M = RADAR_NEG;
    for (int sp = 0; sp < args.n_split; ++sp) {
        M = max(M, pp[sp*(D + 2) + D]);
    }
    float S = 0.0f;
    float acc[RADAR_METAL_D_MAX/N_SIMDWIDTH];
    for (int i = 0; i < nd; ++i) {
        acc[i] = 0.0f;
    }
    for (int sp = 0; sp < args.n_split; ++sp) {
        const float Ms = pp[sp*(D + 2) + D];
        const float f  = Ms <= RADAR_NEG ? 0.0f : exp(Ms - M);
        S += f*pp[sp*(D + 2) + D + 1];
        for (int i = 0; i < nd; ++i) {
            acc[i] += f*pp[sp*(D + 2) + tiisg + i*N_SIMDWIDTH];
        }
    }

    if (args.has_sinks) {
        // a sink adds exp(sink - max) to the denominator only
        const float sv = sinks[h];
        float ms = 1.0f;
        float vs = 1.0f;
        if (sv > M) {
            ms = exp(M - sv);
            M  = sv;
        } else {
            vs = exp(sv - M);
        }
        S = S*ms + vs;
        for (int i = 0; i < nd; ++i) {
            acc[i] *= ms;
        }
    }

    const float S_inv = S == 0.0f ? 0.0f : 1.0f/S;
    device float * out = (device float *) (dst + h*args.nb1 + st*args.nb3);
    for (int i = 0; i < nd; ++i) {
        out[tiisg + i*N_SIMDWIDTH] = acc[i]*S_inv;
    }
}
