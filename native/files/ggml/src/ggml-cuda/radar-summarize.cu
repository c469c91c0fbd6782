// Radar sparse decode attention, GGML_OP_RADAR_SUMMARIZE: one block per (listed segment, KV head, stream)
//   radar_summarize_stats: MEAN, MEANVAR, MINMAX, UNION (and the cell count of ORACLE); threads over the
//                          channels times groups of cells, sums in double like the CPU
//   radar_summarize_rf:    RF; threads over the random features, tiles of keys in shared memory, a running
//                          log-sum-exp per feature
#include "radar-common.cuh"

#ifdef RADAR_CUDA_AVAILABLE

// value d of a K row as f32
template <ggml_type type_K>
static __device__ __forceinline__ float radar_k_value(const char * row, const int d) {
    if constexpr (type_K == GGML_TYPE_F32) {
        return ((const float *) row)[d];
    } else if constexpr (type_K == GGML_TYPE_F16) {
        return __half2float(((const half *) row)[d]);
    } else {
        static_assert(type_K == GGML_TYPE_Q8_0, "bad type");
        const block_q8_0 * b = (const block_q8_0 *) row + d/QK8_0;
        return b->qs[d % QK8_0]*__half2float(b->d);
    }
}

// MEAN, MEANVAR, MINMAX, UNION, ORACLE: thread (cell group cg, channel d), D divides the block size.
// UNION writes MEANVAR's mean and variance, then MINMAX's min and max
template <ggml_type type_K, typename Ts>
__launch_bounds__(RADAR_SUM_NTHREADS)
static __global__ void radar_summarize_stats(const radar_summarize_params p) {
    constexpr int nthreads = RADAR_SUM_NTHREADS;

    const int iu  = blockIdx.x;
    const int hk  = blockIdx.y;
    const int st  = blockIdx.z;
    const int tid = threadIdx.x;

    const int seg = *(const int *) (p.ids + iu*p.nbi0 + st*p.nbi1);
    if (seg < 0 || seg >= p.n_seg_cap) {
        return;
    }

    const int D   = p.D;
    const int ncg = nthreads/D;
    const int d   = tid % D;
    const int cg  = tid / D;

    const bool minmax = p.score == GGML_RADAR_SCORE_MINMAX;
    const bool both   = p.score == GGML_RADAR_SCORE_UNION; // sums in a0, a1 and the bounds in a2, a3
    const bool count  = p.score == GGML_RADAR_SCORE_ORACLE;

    const char *  mrow = p.mask + p.nbm_row + st*p.nbm3;
    const int64_t c0   = (int64_t) seg*p.L;
    const int64_t c1   = min(c0 + p.L, (int64_t) p.n_kv);

    double a0 = minmax ?  INFINITY : 0.0; // sum / min
    double a1 = minmax ? -INFINITY : 0.0; // sum of squares / max
    double a2 =  INFINITY;                // UNION: min
    double a3 = -INFINITY;                // UNION: max
    int    n  = 0;
    for (int64_t c = c0 + cg; c < c1; c += ncg) {
        if (radar_mask_value(mrow, c, p.mask_f16) == -INFINITY) {
            continue;
        }
        n++;
        if (count) {
            continue;
        }
        const float x = radar_k_value<type_K>(p.k + hk*p.nbk1 + c*p.nbk2 + st*p.nbk3, d);
        if (minmax) {
            a0 = fmin(a0, (double) x);
            a1 = fmax(a1, (double) x);
        } else {
            a0 += x;
            a1 += (double) x*x;
            if (both) {
                a2 = fmin(a2, (double) x);
                a3 = fmax(a3, (double) x);
            }
        }
    }

    __shared__ double red0[nthreads];
    __shared__ double red1[nthreads];
    __shared__ double red2[nthreads];
    __shared__ double red3[nthreads];
    __shared__ int    redn[nthreads];
    red0[tid] = a0;
    red1[tid] = a1;
    red2[tid] = a2;
    red3[tid] = a3;
    redn[tid] = n;
    __syncthreads();
    if (cg != 0) {
        return;
    }
    for (int g = 1; g < ncg; ++g) {
        const double b0 = red0[g*D + d];
        const double b1 = red1[g*D + d];
        a0 = minmax ? fmin(a0, b0) : a0 + b0;
        a1 = minmax ? fmax(a1, b1) : a1 + b1;
        a2 = fmin(a2, red2[g*D + d]);
        a3 = fmax(a3, red3[g*D + d]);
        n += redn[g*D + d];
    }

    Ts * out = (Ts *) (p.s + hk*p.nbs1 + seg*p.nbs2 + st*p.nbs3);
    if (count) {
        if (d == 0) {
            radar_s_store(out, 0, (float) n);
        }
        return;
    }
    float o0 = 0.0f;
    float o1 = 0.0f;
    if (n > 0) {
        if (minmax) {
            o0 = (float) a0;
            o1 = (float) a1;
        } else {
            const double mu = a0/n;
            o0 = (float) mu;
            o1 = (float) fmax(a1/n - mu*mu, 0.0);
        }
    }
    radar_s_store(out, d,     o0);
    radar_s_store(out, D + d, o1);
    if (both) {
        radar_s_store(out, 2*D + d, n > 0 ? (float) a2 : 0.0f);
        radar_s_store(out, 3*D + d, n > 0 ? (float) a3 : 0.0f);
    }
    if (d == 0) {
        radar_s_store(out, (both ? 4 : 2)*D, (float) n);
    }
}

// RF: thread per feature j (and its mirror j + m), keys by tiles of RADAR_RF_TILE in shared memory
template <ggml_type type_K, typename Ts>
__launch_bounds__(RADAR_SUM_NTHREADS)
static __global__ void radar_summarize_rf(const radar_summarize_params p) {
    constexpr int nthreads = RADAR_SUM_NTHREADS;
    constexpr int nwarps   = nthreads/WARP_SIZE;
    constexpr int tile     = RADAR_RF_TILE;
    static_assert(tile <= nwarps && tile <= nthreads, "bad tile");

    const int iu   = blockIdx.x;
    const int hk   = blockIdx.y;
    const int st   = blockIdx.z;
    const int tid  = threadIdx.x;
    const int lane = tid % WARP_SIZE;
    const int warp = tid / WARP_SIZE;

    const int seg = *(const int *) (p.ids + iu*p.nbi0 + st*p.nbi1);
    if (seg < 0 || seg >= p.n_seg_cap) {
        return;
    }

    const int D = p.D;
    const int m = p.m;

    __shared__ __align__(16) float kt[tile][RADAR_D_MAX];
    __shared__ float half_sh[tile];
    __shared__ int   valid_sh[tile];

    const char *  mrow = p.mask + p.nbm_row + st*p.nbm3;
    const char *  K    = p.k + hk*p.nbk1 + st*p.nbk3;
    const int64_t c0   = (int64_t) seg*p.L;
    const int64_t c1   = min(c0 + p.L, (int64_t) p.n_kv);
    const float   xs   = sqrtf(p.scale);

    Ts * out = (Ts *) (p.s + hk*p.nbs1 + seg*p.nbs2 + st*p.nbs3);

    int n = 0;
    for (int j0 = 0; j0 < m; j0 += nthreads) {
        const int     j      = j0 + tid;
        const bool    active = j < m;
        const float * w      = (const float *) (p.omega + (int64_t) (active ? j : 0)*p.nbo1);

        float fmp = -INFINITY; // running max and sum of exp(f - max), +omega
        float fsp = 0.0f;
        float fmn = -INFINITY; // -omega
        float fsn = 0.0f;
        n = 0;

        for (int64_t ct = c0; ct < c1; ct += tile) {
            if (tid < tile) {
                const int64_t c = ct + tid;
                valid_sh[tid] = c < c1 && radar_mask_value(mrow, c, p.mask_f16) != -INFINITY;
            }
            __syncthreads();
            for (int i = tid; i < tile*D; i += nthreads) {
                const int t  = i / D;
                const int dd = i % D;
                kt[t][dd] = valid_sh[t] ? radar_k_value<type_K>(K + (ct + t)*p.nbk2, dd) : 0.0f;
            }
            __syncthreads();
            if (warp < tile) {
                float nx2 = 0.0f;
                for (int dd = lane; dd < D; dd += WARP_SIZE) {
                    nx2 += kt[warp][dd]*kt[warp][dd];
                }
                nx2 = warp_reduce_sum(nx2);
                if (lane == 0) {
                    half_sh[warp] = 0.5f*nx2*p.scale;
                }
            }
            __syncthreads();

            if (active) {
                float wx[tile];
#pragma unroll
                for (int t = 0; t < tile; ++t) {
                    wx[t] = 0.0f;
                }
                for (int dd = 0; dd < D; dd += 4) {
                    const float4 wv = *(const float4 *) (w + dd);
#pragma unroll
                    for (int t = 0; t < tile; ++t) {
                        const float4 kv = *(const float4 *) &kt[t][dd];
                        wx[t] += wv.x*kv.x + wv.y*kv.y + wv.z*kv.z + wv.w*kv.w;
                    }
                }
#pragma unroll
                for (int t = 0; t < tile; ++t) {
                    if (!valid_sh[t]) {
                        continue;
                    }
                    const float fp =  wx[t]*xs - half_sh[t];
                    const float fn = -wx[t]*xs - half_sh[t];
                    if (fp > fmp) {
                        fsp = fsp*expf(fmp - fp) + 1.0f;
                        fmp = fp;
                    } else {
                        fsp += expf(fp - fmp);
                    }
                    if (fn > fmn) {
                        fsn = fsn*expf(fmn - fn) + 1.0f;
                        fmn = fn;
                    } else {
                        fsn += expf(fn - fmn);
                    }
                }
            }
#pragma unroll
            for (int t = 0; t < tile; ++t) {
                n += valid_sh[t];
            }
            __syncthreads();
        }

        if (active) {
            const float log_n = logf((float) n);
            radar_s_store(out, j,     n > 0 ? fmp + logf(fsp) - log_n : 0.0f);
            radar_s_store(out, j + m, n > 0 ? fmn + logf(fsn) - log_n : 0.0f);
        }
    }
    if (tid == 0) {
        radar_s_store(out, 2*m, (float) n);
    }
}

template <ggml_type type_K, typename Ts>
static void radar_summarize_launch_s(const radar_summarize_params & p, const dim3 grid, cudaStream_t stream) {
    if (p.score == GGML_RADAR_SCORE_RF) {
        radar_summarize_rf<type_K, Ts><<<grid, RADAR_SUM_NTHREADS, 0, stream>>>(p);
    } else {
        radar_summarize_stats<type_K, Ts><<<grid, RADAR_SUM_NTHREADS, 0, stream>>>(p);
    }
}

template <ggml_type type_K>
static void radar_summarize_launch_K(const radar_summarize_params & p, const dim3 grid, cudaStream_t stream) {
    if (p.s_f16) {
        radar_summarize_launch_s<type_K, half> (p, grid, stream);
    } else {
        radar_summarize_launch_s<type_K, float>(p, grid, stream);
    }
}

void radar_summarize_launch(const ggml_type type_K, const radar_summarize_params & p, const dim3 grid, cudaStream_t stream) {
    switch (type_K) {
        case GGML_TYPE_F32:  radar_summarize_launch_K<GGML_TYPE_F32> (p, grid, stream); break;
        case GGML_TYPE_F16:  radar_summarize_launch_K<GGML_TYPE_F16> (p, grid, stream); break;
        case GGML_TYPE_Q8_0: radar_summarize_launch_K<GGML_TYPE_Q8_0>(p, grid, stream); break;
        default: GGML_ABORT("fatal error");
    }
}

#endif // RADAR_CUDA_AVAILABLE
