// Radar sparse decode attention: the CPU kernels of GGML_OP_RADAR_SUMMARIZE and GGML_OP_RADAR_ATTN (the
// reference the other backends match) and the sizes of their work buffers (ggml_graph_plan).
// See ggml_radar_summarize / ggml_radar_attn in ggml.h and docs/radar-ops.md in radar_gguf.
#include "ops.h"

#include "ggml-cpu.h"
#include "ggml-cpu-impl.h"
#include "ggml-impl.h"
#include "vec.h"

#include <algorithm>
#include <cmath>
#include <cstring>

// ggml_compute_forward_radar_summarize

// work buffer per thread, in floats (see ggml_graph_plan)
size_t ggml_radar_summarize_wsize(const ggml_tensor * dst) {
    const int64_t W = dst->src[0]->ne[0];
    const int64_t D = dst->src[1]->ne[0];
    const int64_t m = dst->src[4] ? dst->src[4]->ne[1] : 0;
    return D + 8*D + 6*m + W + CACHE_LINE_SIZE_F32;
}

// f16 summaries saturate instead of overflowing to inf: a huge variance or bound must still rank
static inline ggml_fp16_t radar_fp32_to_fp16_sat(float x) {
    return GGML_CPU_FP32_TO_FP16(x > 65504.0f ? 65504.0f : (x < -65504.0f ? -65504.0f : x));
}

void ggml_compute_forward_radar_summarize(
        const ggml_compute_params * params,
        ggml_tensor * dst) {

    const ggml_tensor * s     = dst->src[0];
    const ggml_tensor * k     = dst->src[1];
    const ggml_tensor * mask  = dst->src[2];
    const ggml_tensor * ids   = dst->src[3];
    const ggml_tensor * omega = dst->src[4];

    const enum ggml_radar_score score = (enum ggml_radar_score) ggml_get_op_params_i32(dst, 0);
    const int64_t               L     = ggml_get_op_params_i32(dst, 1);
    const float                 scale = ggml_get_op_params_f32(dst, 2);

    GGML_TENSOR_LOCALS(int64_t, nek, k,    ne)
    GGML_TENSOR_LOCALS(size_t,  nbk, k,    nb)
    GGML_TENSOR_LOCALS(int64_t, nem, mask, ne)
    GGML_TENSOR_LOCALS(size_t,  nbm, mask, nb)
    GGML_TENSOR_LOCALS(int64_t, nes, s,    ne)
    GGML_TENSOR_LOCALS(size_t,  nbs, s,    nb)

    const int64_t D     = nek0;
    const int64_t n_hkv = nek1;
    const int64_t n_kv  = nek2;
    const int64_t n_str = nek3;
    const int64_t n_upd = ids->ne[0];
    const int64_t W     = nes0;
    const int64_t m     = omega ? omega->ne[1] : 0;

    GGML_ASSERT(nbk0 == ggml_type_size(k->type));
    GGML_ASSERT(score != GGML_RADAR_SCORE_RF || m > 0);

    ggml_to_float_t const k_to_float = ggml_get_type_traits(k->type)->to_float;
    GGML_ASSERT((k->type == GGML_TYPE_F32 || k_to_float) && "radar_summarize: unsupported K-type");

    const int ith = params->ith;
    const int nth = params->nth;

    float  * kf   = (float *) params->wdata + ith*ggml_radar_summarize_wsize(dst);
    double * acc0 = (double *) (kf + D);    // [D] sum / min
    double * acc1 = acc0 + D;               // [D] sum of squares / max
    double * acc2 = acc1 + D;               // [D] min (UNION)
    double * acc3 = acc2 + D;               // [D] max (UNION)
    float  * feat = (float *) (acc3 + D);   // [2m] feature logs of one key
    float  * fmax = feat + 2*m;             // [2m] running max
    float  * fsum = fmax + 2*m;             // [2m] running sum of exp(f - max)
    float  * orow = fsum + 2*m;             // [W] the summary row in f32, before it is stored in s's type

    const float xs = sqrtf(scale); // random features approximate exp(x_q.x_k) with x = v*sqrt(scale)

    // one work item = (listed segment, kv head, stream)
    const int64_t n_items = n_upd*n_hkv*n_str;
    for (int64_t it = ith; it < n_items; it += nth) {
        const int64_t iu = it % n_upd;
        const int64_t h  = (it / n_upd) % n_hkv;
        const int64_t st = it / (n_upd*n_hkv);

        const int32_t seg = *(const int32_t *) ((const char *) ids->data + iu*ids->nb[0] + st*ids->nb[1]);
        if (seg < 0 || seg >= nes2) {
            continue;
        }

        // validity comes from the last mask row of the stream: it sees every cell of its sequence
        const char * mrow = (const char *) mask->data + (nem1 - 1)*nbm1 + st*nbm3;

        const int64_t c0 = seg*L;
        const int64_t c1 = MIN(c0 + L, n_kv);

        int64_t n = 0;
        for (int64_t d = 0; d < D; ++d) {
            acc0[d] = (score == GGML_RADAR_SCORE_MINMAX) ?  INFINITY : 0.0;
            acc1[d] = (score == GGML_RADAR_SCORE_MINMAX) ? -INFINITY : 0.0;
            acc2[d] =  INFINITY;
            acc3[d] = -INFINITY;
        }
        for (int64_t j = 0; j < 2*m; ++j) {
            fmax[j] = -INFINITY;
            fsum[j] = 0.0f;
        }

        for (int64_t c = c0; c < c1; ++c) {
            const float mv = mask->type == GGML_TYPE_F16 ? GGML_CPU_FP16_TO_FP32(((const ggml_fp16_t *) mrow)[c])
                                                         : ((const float *) mrow)[c];
            if (mv == -INFINITY) {
                continue;
            }
            const char * kr = (const char *) k->data + h*nbk1 + c*nbk2 + st*nbk3;
            const float * kv = (const float *) kr;
            if (k->type == GGML_TYPE_F16) {
                ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) kr, kf, D);
                kv = kf;
            } else if (k_to_float) {
                k_to_float(kr, kf, D);
                kv = kf;
            }
            n++;

            switch (score) {
                case GGML_RADAR_SCORE_MEAN:
                case GGML_RADAR_SCORE_MEANVAR:
                    for (int64_t d = 0; d < D; ++d) {
                        acc0[d] += kv[d];
                        acc1[d] += (double) kv[d]*kv[d];
                    }
                    break;
                case GGML_RADAR_SCORE_MINMAX:
                    for (int64_t d = 0; d < D; ++d) {
                        acc0[d] = MIN(acc0[d], (double) kv[d]);
                        acc1[d] = MAX(acc1[d], (double) kv[d]);
                    }
                    break;
                case GGML_RADAR_SCORE_UNION:
                    for (int64_t d = 0; d < D; ++d) {
                        acc0[d] += kv[d];
                        acc1[d] += (double) kv[d]*kv[d];
                        acc2[d] = MIN(acc2[d], (double) kv[d]);
                        acc3[d] = MAX(acc3[d], (double) kv[d]);
                    }
                    break;
                case GGML_RADAR_SCORE_RF:
                    {
                        float nx2 = 0.0f;
                        ggml_vec_dot_f32(D, &nx2, 0, kv, 0, kv, 0, 1);
                        const float half = 0.5f*nx2*scale;
                        for (int64_t j = 0; j < m; ++j) {
                            // omega column j: contiguous over D
                            const float * w = (const float *) ((const char *) omega->data + j*omega->nb[1]);
                            float wx = 0.0f;
                            ggml_vec_dot_f32(D, &wx, 0, w, 0, kv, 0, 1);
                            feat[j]     =  wx*xs - half;
                            feat[j + m] = -wx*xs - half;
                        }
                        for (int64_t j = 0; j < 2*m; ++j) {
                            if (feat[j] > fmax[j]) {
                                fsum[j] = fsum[j]*expf(fmax[j] - feat[j]) + 1.0f;
                                fmax[j] = feat[j];
                            } else {
                                fsum[j] += expf(feat[j] - fmax[j]);
                            }
                        }
                    } break;
                case GGML_RADAR_SCORE_ORACLE:
                    break;
                default:
                    GGML_ABORT("fatal error");
            }
        }

        float * out = s->type == GGML_TYPE_F32 ? (float *) ((char *) s->data + h*nbs1 + seg*nbs2 + st*nbs3) : orow;
        memset(out, 0, W*sizeof(float));
        out[W - 1] = (float) n;
        switch (n == 0 ? GGML_RADAR_SCORE_ORACLE : score) {
            case GGML_RADAR_SCORE_MEAN:
            case GGML_RADAR_SCORE_MEANVAR:
            case GGML_RADAR_SCORE_UNION:
                for (int64_t d = 0; d < D; ++d) {
                    const double mu = acc0[d]/n;
                    out[d]     = (float) mu;
                    out[D + d] = (float) MAX(acc1[d]/n - mu*mu, 0.0);
                }
                if (score == GGML_RADAR_SCORE_UNION) {
                    for (int64_t d = 0; d < D; ++d) {
                        out[2*D + d] = (float) acc2[d];
                        out[3*D + d] = (float) acc3[d];
                    }
                }
                break;
            case GGML_RADAR_SCORE_MINMAX:
                for (int64_t d = 0; d < D; ++d) {
                    out[d]     = (float) acc0[d];
                    out[D + d] = (float) acc1[d];
                }
                break;
            case GGML_RADAR_SCORE_RF:
                {
                    const float log_n = logf((float) n);
                    for (int64_t j = 0; j < 2*m; ++j) {
                        out[j] = fmax[j] + logf(fsum[j]) - log_n;
                    }
                } break;
            default:
                break;
        }
        if (s->type == GGML_TYPE_F16) {
            ggml_fp16_t * o16 = (ggml_fp16_t *) ((char *) s->data + h*nbs1 + seg*nbs2 + st*nbs3);
            for (int64_t i = 0; i < W; ++i) {
                o16[i] = radar_fp32_to_fp16_sat(orow[i]);
            }
        }
    }
}

// ggml_compute_forward_radar_attn

// the most candidates stage two rescores: n_rescore, or with an adaptive count its ceiling
static int64_t radar_n_rescore_cap(const ggml_tensor * dst) {
    const int64_t n_rescore = ggml_get_op_params_i32(dst, 9);
    const bool    adaptive  = ggml_get_op_params_f32(dst, 12) > 0.0f;
    return adaptive ? MAX(n_rescore, (int64_t) ggml_get_op_params_i32(dst, 11)) : n_rescore;
}

size_t ggml_radar_attn_wsize(const ggml_tensor * dst) {
    const int64_t DK    = dst->src[1]->ne[0];
    const int64_t DV    = dst->src[2]->ne[0];
    const int64_t G     = dst->src[0]->ne[2]/dst->src[1]->ne[2];
    const int64_t n_seg = dst->src[4]->ne[2];
    const int64_t m     = dst->src[6] ? dst->src[6]->ne[1] : 0;
    const int64_t W     = dst->src[4]->ne[0];
    const int64_t L     = ggml_get_op_params_i32(dst, 1);
    const int64_t n_c   = MIN(radar_n_rescore_cap(dst), n_seg); // rescored candidates
    return (G + 5)*n_seg + 3*DK + 3*DV + 2*G*DK + 2*m + W + L + n_c*L + 2*CACHE_LINE_SIZE_F32 + 16;
}

// shared by the threads, after their own buffers: the segment scores of every query head
size_t ggml_radar_attn_wsize_shared(const ggml_tensor * dst) {
    const int64_t n_hq  = dst->src[0]->ne[2];
    const int64_t ns    = dst->src[0]->ne[3];
    const int64_t n_hkv = dst->src[1]->ne[2];
    const int64_t n_seg = dst->src[4]->ne[2];
    const int64_t L     = ggml_get_op_params_i32(dst, 1);
    const int64_t n_c   = MIN(radar_n_rescore_cap(dst), n_seg); // rescored candidates
    const int64_t sh    = ggml_get_op_params_i32(dst, 5) != 0; // a shared selection
    const int64_t parts = ggml_get_op_params_i32(dst, 0) == GGML_RADAR_SCORE_UNION ? 2 : 1;
    // the group scores [parts, ns, n_hq, n_seg] (MEAN, MEANVAR, MINMAX; UNION: MEANVAR's, then MINMAX's),
    // then the shared selections [ns, n_hkv, n_seg] as bytes (in floats, rounded up), then the shared two
    // stages' logits of every query head [ns, n_hq, n_c, L] and their slots [ns, n_hkv, n_seg] (only with a
    // shared selection)
    return parts*n_hq*ns*n_seg + CACHE_LINE_SIZE_F32 + (n_hkv*ns*n_seg + sizeof(float) - 1)/sizeof(float) +
           sh*(n_hq*ns*n_c*L + n_hkv*ns*n_seg);
}

// the MINMAX bound of one query against per-channel minima mn and maxima mx [D]
static float radar_score_minmax(const float * q, const float * mn, const float * mx, int64_t D, float scale) {
    constexpr int64_t NL = 8; // partial sums in lanes: vectorizes without reassociation
    float a[NL] = { 0.0f };
    for (int64_t d = 0; d < D; ++d) {
        a[d % NL] += MAX(q[d]*mn[d], q[d]*mx[d]);
    }
    return scale*(((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])));
}

// The two inner loops of the attention with an f16 cache, written out for x86: the K dots of a run of cells
// (stage two scores every cell of its candidates) and the V rows weighted into the output (every attended
// cell). Through ggml's per-type vec_dot / to_float each row is a call through a pointer, and a V row goes
// through a buffer; a profile of a 32k step on two cores had those two at 28% and 18% of the step.
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__F16C__) && defined(__FMA__))
#define RADAR_F16_ROWS 1
#define RADAR_F16_ROWS_D_MAX 512
#endif

#ifdef RADAR_F16_ROWS
// out[i] = q . row i for the n f16 rows k0 + i*stride [D] and q [D] in f32 (D % 8 == 0)
static void radar_dot_rows_f16(int64_t D, const float * q, const char * k0, size_t stride, int64_t n, float * out) {
    for (int64_t i = 0; i < n; ++i) {
        const ggml_fp16_t * k = (const ggml_fp16_t *) (k0 + i*stride);
        int64_t d = 0;
        float   r = 0.0f;
#if defined(__AVX512F__)
        if (D % 16 == 0) {
            __m512 acc = _mm512_setzero_ps();
            for (; d < D; d += 16) {
                acc = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (k + d))), _mm512_loadu_ps(q + d), acc);
            }
            r = _mm512_reduce_add_ps(acc);
        }
#endif
        if (d < D) {
            __m256 acc = _mm256_setzero_ps();
            for (; d < D; d += 8) {
                acc = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (k + d))), _mm256_loadu_ps(q + d), acc);
            }
            __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
            h = _mm_add_ps(h, _mm_movehl_ps(h, h));
            h = _mm_add_ss(h, _mm_movehdup_ps(h));
            r = _mm_cvtss_f32(h);
        }
        out[i] = r;
    }
}

// y[0:n] += v * x[0:n] for an f16 row x (n % 8 == 0): converted and accumulated in one pass, one fused
// multiply-add an element as ggml_vec_mad_f32 after ggml_cpu_fp16_to_fp32 (the same values)
static inline void radar_mad_row_f16(int64_t n, float * GGML_RESTRICT y, const ggml_fp16_t * GGML_RESTRICT x, float v) {
    int64_t i = 0;
#if defined(__AVX512F__)
    const __m512 v16 = _mm512_set1_ps(v);
    for (; i + 16 <= n; i += 16) {
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *) (x + i))), v16, _mm512_loadu_ps(y + i)));
    }
#endif
    const __m256 v8 = _mm256_set1_ps(v);
    for (; i < n; i += 8) {
        _mm256_storeu_ps(y + i, _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *) (x + i))), v8, _mm256_loadu_ps(y + i)));
    }
}
#endif // RADAR_F16_ROWS

// MEAN, MEANVAR, MINMAX scores of one summary row for the G query heads of its KV head: qg, q2g are
// the heads' queries and their squares [G, D]; the row stays in L1 across the heads. UNION: MEANVAR's
// score into out, MINMAX's (from the row's min and max) into out2
static void radar_score_row_group(
        enum ggml_radar_score score, const float * qg, const float * q2g, const float * row, int64_t D, int64_t G,
        float scale, float * out, float * out2, int64_t out_stride) {
    for (int64_t g = 0; g < G; ++g) {
        const float * q = qg + g*D;
        float r;
        if (score == GGML_RADAR_SCORE_MINMAX) {
            r = radar_score_minmax(q, row, row + D, D, scale);
        } else {
            float a = 0.0f;
            ggml_vec_dot_f32(D, &a, 0, q, 0, row, 0, 1);
            r = scale*a;
            if (score == GGML_RADAR_SCORE_MEANVAR || score == GGML_RADAR_SCORE_UNION) {
                float b = 0.0f;
                ggml_vec_dot_f32(D, &b, 0, q2g + g*D, 0, row + D, 0, 1);
                r += 0.5f*scale*scale*b;
            }
        }
        out[g*out_stride] = std::isnan(r) ? -INFINITY : r;
        if (score == GGML_RADAR_SCORE_UNION) {
            const float r2 = radar_score_minmax(q, row + 2*D, row + 3*D, D, scale);
            out2[g*out_stride] = std::isnan(r2) ? -INFINITY : r2;
        }
    }
}

// RF: log-space score of one summarized segment, lq = the query's feature logs [2m]
static float radar_score_rf(const float * lq, const float * row, int64_t m) {
    float mx = -INFINITY;
    for (int64_t j = 0; j < 2*m; ++j) {
        mx = MAX(mx, lq[j] + row[j]);
    }
    float sum = 0.0f;
    for (int64_t j = 0; j < 2*m; ++j) {
        sum += expf(lq[j] + row[j] - mx);
    }
    return mx + logf(sum);
}

void ggml_compute_forward_radar_attn(
        const ggml_compute_params * params,
        ggml_tensor * dst) {

    const ggml_tensor * q     = dst->src[0];
    const ggml_tensor * k     = dst->src[1];
    const ggml_tensor * v     = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * s     = dst->src[4];
    const ggml_tensor * info  = dst->src[5];
    const ggml_tensor * omega = dst->src[6];
    const ggml_tensor * sinks = dst->src[7];

    const enum ggml_radar_score score = (enum ggml_radar_score) ggml_get_op_params_i32(dst, 0);
    const int64_t L        = ggml_get_op_params_i32(dst, 1);
    const int64_t top_k    = ggml_get_op_params_i32(dst, 2);
    const int64_t n_sink   = ggml_get_op_params_i32(dst, 3);
    const int64_t n_recent = ggml_get_op_params_i32(dst, 4);
    const bool    shared   = ggml_get_op_params_i32(dst, 5) != 0;
    const float   scale    = ggml_get_op_params_f32(dst, 6);
    const float   max_bias = ggml_get_op_params_f32(dst, 7);
    const float   softcap  = ggml_get_op_params_f32(dst, 8);
    const int64_t n_rescore = ggml_get_op_params_i32(dst, 9);
    const float   mass      = ggml_get_op_params_f32(dst, 10);
    const int64_t n_resc_hi = radar_n_rescore_cap(dst);        // adaptive: the ceiling of the candidates
    const float   p_resc    = ggml_get_op_params_f32(dst, 12); // adaptive: their estimated share
    const bool    adaptive  = p_resc > 0.0f && n_resc_hi > n_rescore && n_rescore > top_k && !shared &&
                              score != GGML_RADAR_SCORE_UNION; // its estimate needs one score

    GGML_TENSOR_LOCALS(int64_t, neq, q,   ne)
    GGML_TENSOR_LOCALS(size_t,  nbq, q,   nb)
    GGML_TENSOR_LOCALS(int64_t, nek, k,   ne)
    GGML_TENSOR_LOCALS(size_t,  nbk, k,   nb)
    GGML_TENSOR_LOCALS(int64_t, nev, v,   ne)
    GGML_TENSOR_LOCALS(size_t,  nbv, v,   nb)
    GGML_TENSOR_LOCALS(size_t,  nbs, s,   nb)
    GGML_TENSOR_LOCALS(size_t,  nb,  dst, nb)

    const int64_t DK    = nek0;
    const int64_t DV    = nev0;
    const int64_t n_kv  = nek1;
    const int64_t n_hq  = neq2;
    const int64_t n_hkv = nek2;
    const int64_t G     = n_hq/n_hkv;
    const int64_t m     = omega ? omega->ne[1] : 0;
    const int64_t W     = s->ne[0];

    GGML_ASSERT(nbq0 == sizeof(float));
    GGML_ASSERT(nbk0 == ggml_type_size(k->type));
    GGML_ASSERT(nbv0 == ggml_type_size(v->type));
    GGML_ASSERT(nb0  == sizeof(float));

    const float kq_scale = softcap != 0.0f ? scale/softcap : scale;

    const uint32_t n_head_log2 = 1u << (uint32_t) floor(log2(n_hq));
    const float m0 = powf(2.0f, -(max_bias       ) / n_head_log2);
    const float m1 = powf(2.0f, -(max_bias / 2.0f) / n_head_log2);

    ggml_type         const k_vec_dot_type = ggml_get_type_traits_cpu(k->type)->vec_dot_type;
    ggml_from_float_t const q_to_vec_dot   = ggml_get_type_traits_cpu(k_vec_dot_type)->from_float;
    ggml_vec_dot_t    const kq_vec_dot     = ggml_get_type_traits_cpu(k->type)->vec_dot;
    ggml_to_float_t   const v_to_float     = ggml_get_type_traits(v->type)->to_float;

    GGML_ASSERT((                            q_to_vec_dot) && "radar_attn: unsupported K-type");
    GGML_ASSERT((v->type == GGML_TYPE_F32 || v_to_float  ) && "radar_attn: unsupported V-type");

    const int ith = params->ith;
    const int nth = params->nth;

    const int64_t n_seg_cap = s->ne[2];

    float * wbase  = (float *) params->wdata + ith*ggml_radar_attn_wsize(dst);
    float * scores = wbase;                          // [G, n_seg_cap] per-head scores
    float * shs    = scores + G*n_seg_cap;           // [n_seg_cap] score used for selection
    float * shs2   = shs + n_seg_cap;                // [n_seg_cap] UNION: MINMAX's score used for selection
    int32_t * idx  = (int32_t *) (shs2 + n_seg_cap); // [n_seg_cap] candidate order
    char  * keep   = (char *) (idx + n_seg_cap);     // [n_seg_cap] kept segments
    float * VKQ32  = (float *) (keep + GGML_PAD(n_seg_cap, 64)); // [DV]
    float * V32    = VKQ32 + DV;                     // [DV]
    float * lq     = V32 + DV;                       // [2m] feature logs of the query
    float * srow   = lq + 2*m;                       // [W] an f16 summary row in f32
    float * qg     = srow + W;                       // [G, DK] the queries of a KV head's group
    float * q2g    = qg + G*DK;                      // [G, DK] their squares
    void  * Q_q    = (void *) (q2g + G*DK + CACHE_LINE_SIZE_F32); // [DK] query in K's vec-dot type
    float * lseg   = (float *) Q_q + DK;             // [L] the logits of one segment
    float * clog   = lseg + L;                       // [n_rescore, L] the head's logits of its rescored candidates
    int32_t * cpos = (int32_t *) (clog + MIN(n_resc_hi, n_seg_cap)*L); // [n_seg_cap] 1 + slot in clog, 0: none

    // MEAN, MEANVAR, MINMAX, UNION: scores of all query heads, computed per KV group before the selection,
    // so that each summary row is read once per group (not once per query head); [parts, ns, n_hq, n_seg_cap]
    // (UNION: MEANVAR's scores, then MINMAX's)
    float * gscores = (float *) params->wdata + nth*ggml_radar_attn_wsize(dst);
    const bool    group_score = score == GGML_RADAR_SCORE_MEAN || score == GGML_RADAR_SCORE_MEANVAR ||
                                score == GGML_RADAR_SCORE_MINMAX || score == GGML_RADAR_SCORE_UNION;
    const bool    two_scores  = score == GGML_RADAR_SCORE_UNION;
    const int64_t n_gscores   = n_hq*neq3*n_seg_cap; // one part

#ifdef RADAR_F16_ROWS
    // an f16 cache: the dots by radar_dot_rows_f16 with the query in qk32 (its f16 rounding, as ggml's dot
    // uses it), everywhere, so that a cell's logit does not depend on the path that computes it
    const bool f16_rows = k->type == GGML_TYPE_F16 && DK % 8 == 0 && DK <= RADAR_F16_ROWS_D_MAX;
    const bool f16_mad  = v->type == GGML_TYPE_F16 && DV % 8 == 0;
    float      qk32[RADAR_F16_ROWS_D_MAX];
#endif

    // the query of the dots below: qf [DK] into Q_q (K's vec-dot type), and into qk32 for an f16 cache
    auto set_query = [&](const float * qf) {
        q_to_vec_dot(qf, Q_q, DK);
#ifdef RADAR_F16_ROWS
        if (f16_rows) {
            ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) Q_q, qk32, DK);
        }
#endif
    };

    // the mask value of cell c (-INF: masked), and the logit of an unmasked cell from its q.k dot
    auto mask_at = [&](const char * mp, int64_t c) -> float {
        return mask->type == GGML_TYPE_F16 ? GGML_CPU_FP16_TO_FP32(((const ggml_fp16_t *) mp)[c]) : ((const float *) mp)[c];
    };
    auto logit_of_dot = [&](float r, float slope, float mv) -> float {
        r *= kq_scale;
        if (softcap != 0.0f) {
            r = softcap*tanhf(r);
        }
        return r + slope*mv;
    };

    // logit of query row Q_q (converted) against cell c of kv head hk; -INF when masked
    auto logit = [&](const char * mp, float slope, int64_t c, int64_t hk, int64_t st) -> float {
        const float mv = mask_at(mp, c);
        if (mv == -INFINITY) {
            return -INFINITY;
        }
        float r;
        const char * kr = (const char *) k->data + c*nbk1 + hk*nbk2 + st*nbk3;
#ifdef RADAR_F16_ROWS
        if (f16_rows) {
            radar_dot_rows_f16(DK, qk32, kr, 0, 1, &r);
        } else
#endif
        kq_vec_dot(DK, &r, 0, kr, 0, Q_q, 0, 1);
        return logit_of_dot(r, slope, mv);
    };

    auto slope_of = [&](int64_t h) -> float {
        return max_bias > 0.0f ? (h < (int64_t) n_head_log2 ? powf(m0, h + 1) : powf(m1, 2*(h - n_head_log2) + 1)) : 1.0f;
    };


    // log of the exact attention mass of cells [c0, c1) (at most one segment) for the query in Q_q;
    // -INF when all are masked or the range is empty (a segment wholly inside the sinks, c0 > c1, when
    // n_sink > L). The logits first, then one vectorized exp-sum (a copy of the logits into keep_logits
    // when given)
    auto cells_lse = [&](const char * mp, float slope, int64_t c0, int64_t c1, int64_t hk, int64_t st,
                         float * keep_logits = nullptr) -> float {
        const int64_t n  = MAX(c1 - c0, 0);
        float         mx = -INFINITY;
#ifdef RADAR_F16_ROWS
        if (f16_rows && n > 0) {
            // the dots of the run in one call
            radar_dot_rows_f16(DK, qk32, (const char *) k->data + c0*nbk1 + hk*nbk2 + st*nbk3, nbk1, n, lseg);
            for (int64_t i = 0; i < n; ++i) {
                const float mv = mask_at(mp, c0 + i);
                lseg[i] = mv == -INFINITY ? -INFINITY : logit_of_dot(lseg[i], slope, mv);
                mx = MAX(mx, lseg[i]);
            }
        } else
#endif
        for (int64_t i = 0; i < n; ++i) {
            lseg[i] = logit(mp, slope, c0 + i, hk, st);
            mx = MAX(mx, lseg[i]);
        }
        if (keep_logits) {
            memcpy(keep_logits, lseg, n*sizeof(float));
        }
        if (mx == -INFINITY) {
            return -INFINITY;
        }
        const ggml_float sum = ggml_vec_soft_max_f32((int) n, lseg, lseg, mx);
        return mx + logf((float) sum);
    };

    // log-add b into a (either may be -INF)
    auto log_add = [](float a, float b) -> float {
        const float hi = MAX(a, b);
        return hi == -INFINITY ? -INFINITY : hi + log1pf(expf(MIN(a, b) - hi));
    };

    // log of the exact mass of the cells attended whatever the selection: the sinks, the recent segments
    // [n_cand, n_seg) and the tail past the last whole segment
    auto always_lse = [&](const char * mp, float slope, int64_t n_seg, int64_t n_cand, int64_t hk, int64_t st) -> float {
        const int64_t sink_end = MIN(n_sink, n_seg*L);
        float r = -INFINITY;
        for (int64_t c = 0; c < sink_end; c += L) {
            r = log_add(r, cells_lse(mp, slope, c, MIN(c + L, sink_end), hk, st));
        }
        for (int64_t c = MAX(n_cand*L, sink_end); c < n_kv; c += L) {
            r = log_add(r, cells_lse(mp, slope, c, MIN(c + L, n_kv), hk, st));
        }
        return r;
    };

    // summary row of segment sg of kv head hk as f32 (f16 rows are widened into srow)
    auto summary_row = [&](int64_t hk, int64_t sg, int64_t st) -> const float * {
        const char * sp = (const char *) s->data + hk*nbs1 + sg*nbs2 + st*nbs3;
        if (s->type == GGML_TYPE_F16) {
            ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) sp, srow, W);
            return srow;
        }
        return (const float *) sp;
    };

    // scores of segments [0, n_cand) for query head h into out (UNION: part 0 MEANVAR's, 1 MINMAX's)
    auto score_head = [&](int64_t h, int64_t st, int64_t n_cand, const char * mp, float * out, int part = 0) {
        const int64_t hk = h/G;
        if (group_score) {
            memcpy(out, gscores + part*n_gscores + (st*n_hq + h)*n_seg_cap, n_cand*sizeof(float));
            return;
        }
        const float * qf = (const float *) ((const char *) q->data + h*nbq2 + st*nbq3);
        if (score == GGML_RADAR_SCORE_ORACLE) {
            set_query(qf);
            const float slope = slope_of(h);
            for (int64_t sg = 0; sg < n_cand; ++sg) {
                out[sg] = cells_lse(mp, slope, sg*L, (sg + 1)*L, hk, st);
            }
            return;
        }
        if (score == GGML_RADAR_SCORE_RF) {
            float nx2 = 0.0f;
            ggml_vec_dot_f32(DK, &nx2, 0, qf, 0, qf, 0, 1);
            const float half = 0.5f*nx2*scale;
            const float xs   = sqrtf(scale);
            for (int64_t j = 0; j < m; ++j) {
                const float * w = (const float *) ((const char *) omega->data + j*omega->nb[1]);
                float wx = 0.0f;
                ggml_vec_dot_f32(DK, &wx, 0, w, 0, qf, 0, 1);
                lq[j]     =  wx*xs - half;
                lq[j + m] = -wx*xs - half;
            }
        }
        for (int64_t sg = 0; sg < n_cand; ++sg) {
            const float * row = summary_row(hk, sg, st);
            const float r = row[W - 1] > 0.0f ? radar_score_rf(lq, row, m) : -INFINITY;
            out[sg] = std::isnan(r) ? -INFINITY : r;
        }
    };

    auto counts_of = [&](int64_t st, int64_t & n_seg, int64_t & n_cand) {
        const int32_t n_seg_in = *(const int32_t *) ((const char *) info->data + st*info->nb[1]);
        n_seg = MAX(0, MIN((int64_t) n_seg_in, MIN(n_kv/L, n_seg_cap)));
        n_cand = n_seg - MIN(n_seg, (n_recent + L - 1)/L);
    };

    if (group_score) {
        // one work item = (KV head, stream, chunk of segments)
        const int64_t chunk   = 64;
        const int64_t n_chunk = (n_seg_cap + chunk - 1)/chunk;
        for (int64_t it = ith; it < n_hkv*neq3*n_chunk; it += nth) {
            const int64_t ic = it % n_chunk;
            const int64_t hk = (it / n_chunk) % n_hkv;
            const int64_t st = it / (n_chunk*n_hkv);
            int64_t n_seg, n_cand;
            counts_of(st, n_seg, n_cand);
            const int64_t sg0 = ic*chunk;
            const int64_t sg1 = MIN(sg0 + chunk, n_cand);
            if (n_cand <= top_k || sg0 >= sg1) {
                continue;
            }
            for (int64_t g = 0; g < G; ++g) {
                const float * qf = (const float *) ((const char *) q->data + (hk*G + g)*nbq2 + st*nbq3);
                for (int64_t d = 0; d < DK; ++d) {
                    qg [g*DK + d] = qf[d];
                    q2g[g*DK + d] = qf[d]*qf[d];
                }
            }
            float * out  = gscores + (st*n_hq + hk*G)*n_seg_cap;
            float * out2 = two_scores ? out + n_gscores : nullptr;
            for (int64_t sg = sg0; sg < sg1; ++sg) {
                const float * row = summary_row(hk, sg, st);
                if (!(row[W - 1] > 0.0f)) {
                    for (int64_t g = 0; g < G; ++g) {
                        out[g*n_seg_cap + sg] = -INFINITY;
                        if (out2) {
                            out2[g*n_seg_cap + sg] = -INFINITY;
                        }
                    }
                    continue;
                }
                radar_score_row_group(score, qg, q2g, row, DK, G, scale, out + sg, out2 ? out2 + sg : nullptr, n_seg_cap);
            }
        }
        ggml_barrier(params->threadpool);
    }

    // 1. choose segments: keep[0, n_seg) for query head h (with shared, for h's group) of stream st; pos
    // marks the rescored candidates whose logits are kept in logs: [n_c_cap, L] of head h, or with shared
    // [G, n_c_cap, L], those of every head of the group
    const int64_t n_c_cap = MIN(n_resc_hi, n_seg_cap);
    auto choose = [&](int64_t h, int64_t st, int64_t n_seg, int64_t n_cand, const char * mp, int32_t * pos,
                      float * logs) {
        const int64_t hk = h/G;
        memset(keep, 1, n_seg);
        memset(pos, 0, n_seg*sizeof(int32_t));
        // the group's summed attention share: logsumexp_h (score_h - lse_h), of score part `part` into out
        auto group_share = [&](int part, float * out) {
            for (int64_t sg = 0; sg < n_cand; ++sg) {
                out[sg] = -INFINITY;
            }
            for (int64_t g = 0; g < G; ++g) {
                float * sc = scores + g*n_seg_cap;
                score_head(hk*G + g, st, n_cand, mp, sc, part);
                float mx = -INFINITY;
                for (int64_t sg = 0; sg < n_cand; ++sg) {
                    mx = MAX(mx, sc[sg]);
                }
                if (mx == -INFINITY) {
                    continue;
                }
                float sum = 0.0f;
                for (int64_t sg = 0; sg < n_cand; ++sg) {
                    sum += expf(sc[sg] - mx);
                }
                const float lse = mx + logf(sum);
                for (int64_t sg = 0; sg < n_cand; ++sg) {
                    out[sg] = log_add(out[sg], sc[sg] - lse);
                }
            }
        };
        if (n_cand > top_k) {
            if (shared) {
                group_share(0, shs);
                if (two_scores) {
                    group_share(1, shs2);
                }
            } else {
                score_head(h, st, n_cand, mp, shs);
                if (two_scores) {
                    score_head(h, st, n_cand, mp, shs2, 1);
                }
            }
            for (int64_t sg = 0; sg < n_cand; ++sg) {
                idx[sg] = (int32_t) sg;
                keep[sg] = 0;
            }
            // best by score, ties to the lower segment index (a strict total order)
            auto better = [&](int32_t a, int32_t b) {
                return shs[a] > shs[b] || (shs[a] == shs[b] && a < b);
            };
            // two stages: the n_c best by summary score are rescored exactly, then the top_k of them are kept
            int64_t n_c = n_rescore > top_k ? MIN(n_rescore, n_cand) : top_k;
            float   al_adaptive = NAN; // the always-attended log mass, when the adaptive count computed it
            if (adaptive && n_cand > n_c) {
                // as many of the best by score (at least n_c, at most n_hi) as it takes for their estimated
                // share of the mass to reach p_resc: a segment's estimate is L exp(score), the always-attended
                // cells (and a sink logit) count with their exact mass
                const int64_t n_hi = MIN(n_resc_hi, n_cand);
                std::partial_sort(idx, idx + n_hi, idx + n_cand, better);
                set_query((const float *) ((const char *) q->data + h*nbq2 + st*nbq3));
                float al = always_lse(mp, slope_of(h), n_seg, n_cand, hk, st);
                if (sinks) {
                    al = log_add(al, ((const float *) sinks->data)[h]);
                }
                al_adaptive = al;
                const float log_l = logf((float) L);
                float mx = al;
                for (int64_t sg = 0; sg < n_cand; ++sg) {
                    mx = MAX(mx, shs[sg] + log_l);
                }
                if (mx != -INFINITY) {
                    double total = 0.0;
                    for (int64_t sg = 0; sg < n_cand; ++sg) {
                        total += expf(shs[sg] + log_l - mx);
                    }
                    double acc = expf(al - mx);
                    total += acc;
                    int64_t need = n_hi;
                    for (int64_t i = 0; i < n_hi; ++i) {
                        acc += expf(shs[idx[i]] + log_l - mx);
                        if (acc >= p_resc*total) {
                            need = i + 1;
                            break;
                        }
                    }
                    n_c = MAX(n_c, need);
                }
            } else if (two_scores) {
                // UNION: the best half by MEANVAR, then the best of the others by MINMAX
                const int64_t n_a = (n_c + 1)/2;
                auto better2 = [&](int32_t a, int32_t b) {
                    return shs2[a] > shs2[b] || (shs2[a] == shs2[b] && a < b);
                };
                std::nth_element(idx, idx + n_a, idx + n_cand, better);
                std::nth_element(idx + n_a, idx + n_c, idx + n_cand, better2);
            } else {
                std::nth_element(idx, idx + n_c, idx + n_cand, better);
            }
            int64_t n_keep = top_k;
            if (n_c > top_k) {
                // exact log mass of each candidate's non-sink cells (the sinks are attended anyway);
                // shared: the group's summed share, logsumexp_h (exact_h - logsumexp over the candidates).
                // With a mass target the shares are of all the mass the two stages know of instead (the
                // candidates plus the always-attended cells), and `known` sums what is kept anyway
                const int64_t h0 = shared ? hk*G : h;
                const int64_t h1 = shared ? h0 + G : h + 1;
                for (int64_t i = 0; i < n_c; ++i) {
                    shs[idx[i]] = -INFINITY;
                }
                float known = -INFINITY; // log of the always-attended share, summed over the heads
                for (int64_t hh = h0; hh < h1; ++hh) {
                    set_query((const float *) ((const char *) q->data + hh*nbq2 + st*nbq3));
                    const float slope = slope_of(hh);
                    float * ex = scores; // [n_c] this head's exact scores
                    float   lse = -INFINITY;
                    // the logits are kept (the own head's; with shared, every head's): the attention below
                    // reuses them (the same q, the same function, so the same values) instead of computing
                    // them again
                    float * kl = shared ? logs + (hh - h0)*n_c_cap*L : (hh == h ? logs : nullptr);
                    for (int64_t i = 0; i < n_c; ++i) {
                        const int64_t sg = idx[i];
                        ex[i] = cells_lse(mp, slope, MAX(sg*L, n_sink), (sg + 1)*L, hk, st, kl ? kl + i*L : nullptr);
                        lse   = log_add(lse, ex[i]);
                        if (kl) {
                            pos[sg] = (int32_t) (i + 1);
                        }
                    }
                    if (mass > 0.0f) {
                        float al = al_adaptive;
                        if (std::isnan(al)) {
                            al = always_lse(mp, slope, n_seg, n_cand, hk, st);
                            if (sinks) {
                                al = log_add(al, ((const float *) sinks->data)[hh]);
                            }
                        }
                        lse   = log_add(lse, al);
                        known = log_add(known, al - lse);
                    }
                    if (!shared && mass == 0.0f) {
                        for (int64_t i = 0; i < n_c; ++i) {
                            shs[idx[i]] = ex[i];
                        }
                    } else if (lse != -INFINITY) {
                        for (int64_t i = 0; i < n_c; ++i) {
                            shs[idx[i]] = log_add(shs[idx[i]], ex[i] - lse);
                        }
                    }
                }
                if (mass > 0.0f) {
                    // best first; past top_k, keep while the kept share is below the target (all of them
                    // at p = 1, which rounding in the sums could otherwise cut short)
                    std::sort(idx, idx + n_c, better);
                    const float target = logf(mass*(float) (h1 - h0));
                    for (int64_t i = 0; i < n_c; ++i) {
                        if (i >= top_k && mass < 1.0f && known >= target) {
                            break;
                        }
                        known  = log_add(known, shs[idx[i]]);
                        n_keep = i + 1;
                    }
                } else {
                    std::nth_element(idx, idx + top_k, idx + n_c, better);
                }
            }
            for (int64_t i = 0; i < n_keep; ++i) {
                keep[idx[i]] = 1;
            }
        }
    };

    // shared: a group's selection is made once, by one thread per (KV head, stream), not once per query head
    // (G times the stage-two reads), and each query head attends it below
    char * gkeep = (char *) (gscores + (two_scores ? 2 : 1)*n_gscores + CACHE_LINE_SIZE_F32); // [ns, n_hkv, n_seg_cap]
    // and its two stages' logits of every query head [ns, n_hkv, G, n_c_cap, L], their slots [ns, n_hkv, n_seg_cap]
    float   * gclog = (float *) gkeep + (n_hkv*neq3*n_seg_cap + sizeof(float) - 1)/sizeof(float);
    int32_t * gcpos = (int32_t *) (gclog + n_hq*neq3*n_c_cap*L);
    if (shared) {
        for (int64_t it = ith; it < n_hkv*neq3; it += nth) {
            const int64_t hk = it % n_hkv;
            const int64_t st = it / n_hkv;
            int64_t n_seg, n_cand;
            counts_of(st, n_seg, n_cand);
            choose(hk*G, st, n_seg, n_cand, (const char *) mask->data + st*mask->nb[3], gcpos + it*n_seg_cap,
                   gclog + it*G*n_c_cap*L);
            memcpy(gkeep + it*n_seg_cap, keep, n_seg);
        }
        ggml_barrier(params->threadpool);
    }

    // one work item = (query head, stream)
    const int64_t n_items = n_hq*neq3;
    for (int64_t it = ith; it < n_items; it += nth) {
        const int64_t h  = it % n_hq;
        const int64_t st = it / n_hq;
        const int64_t hk = h/G;

        const char * mp = (const char *) mask->data + st*mask->nb[3];

        int64_t n_seg, n_cand;
        counts_of(st, n_seg, n_cand);
        const int32_t * pos = cpos; // 1 + slot in lgs of a rescored segment, 0: not rescored
        const float   * lgs = clog; // [n_c_cap, L] this head's logits of the rescored segments
        if (shared) {
            const int64_t ig = st*n_hkv + hk;
            memcpy(keep, gkeep + ig*n_seg_cap, n_seg);
            pos = gcpos + ig*n_seg_cap;
            lgs = gclog + (ig*G + h % G)*n_c_cap*L;
        } else {
            choose(h, st, n_seg, n_cand, mp, cpos, clog);
        }

        // 2. exact online softmax over sinks + kept segments + tail, in cell order
        const float * qf = (const float *) ((const char *) q->data + h*nbq2 + st*nbq3);
        set_query(qf);
        const float slope = slope_of(h);

        // f32 accumulation: the dense decode path of flash attention accumulates in f32 too
        float S = 0.0f;
        float M = -INFINITY;
        memset(VKQ32, 0, DV*sizeof(float));

        auto attend_l = [&](int64_t c, float l) {
            if (l == -INFINITY) {
                return;
            }
            const char * v_data = (const char *) v->data + c*nbv1 + hk*nbv2 + st*nbv3;
            float ms = 1.0f;
            float vs = 1.0f;
            if (l > M) {
                ms = expf(M - l);
                M  = l;
                ggml_vec_scale_f32(DV, VKQ32, ms);
            } else {
                vs = expf(l - M);
            }
#ifdef RADAR_F16_ROWS
            if (f16_mad) {
                radar_mad_row_f16(DV, VKQ32, (const ggml_fp16_t *) v_data, vs);
            } else
#endif
            if (v->type == GGML_TYPE_F16) {
                ggml_cpu_fp16_to_fp32((const ggml_fp16_t *) v_data, V32, DV); // SIMD, unlike the generic to_float
                ggml_vec_mad_f32(DV, VKQ32, V32, vs);
            } else if (v_to_float) {
                v_to_float(v_data, V32, DV);
                ggml_vec_mad_f32(DV, VKQ32, V32, vs);
            } else {
                ggml_vec_mad_f32(DV, VKQ32, (const float *) v_data, vs);
            }
            S = S*ms + vs;
        };
        auto attend = [&](int64_t c) {
            attend_l(c, logit(mp, slope, c, hk, st));
        };

        const int64_t sink_end = MIN(n_sink, n_seg*L);
        for (int64_t c = 0; c < sink_end; ++c) {
            attend(c);
        }
        for (int64_t sg = 0; sg < n_seg; ++sg) {
            if (!keep[sg]) {
                continue;
            }
            const int64_t c0 = MAX(sg*L, sink_end);
            if (pos[sg] && c0 == MAX(sg*L, n_sink)) { // rescored: its logits are known
                const float * lg = lgs + (int64_t) (pos[sg] - 1)*L;
                for (int64_t c = c0; c < (sg + 1)*L; ++c) {
                    attend_l(c, lg[c - c0]);
                }
                continue;
            }
            for (int64_t c = c0; c < (sg + 1)*L; ++c) {
                attend(c);
            }
        }
        for (int64_t c = n_seg*L; c < n_kv; ++c) {
            attend(c);
        }

        if (sinks) {
            const float sv = ((const float *) sinks->data)[h];
            float ms = 1.0f;
            float vs = 1.0f;
            if (sv > M) {
                ms = expf(M - sv);
                M  = sv;
                ggml_vec_scale_f32(DV, VKQ32, ms);
            } else {
                vs = expf(sv - M);
            }
            S = S*ms + vs;
        }

        const float S_inv = S == 0.0f ? 0.0f : 1.0f/S;
        ggml_vec_scale_f32(DV, VKQ32, S_inv);
        memcpy((char *) dst->data + h*nb1 + st*nb3, VKQ32, DV*sizeof(float));
    }
}
