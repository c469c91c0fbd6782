// Radar sparse decode attention on Metal: the kernel arguments of kernels/radar.metal (shared by the
// kernels and the host) and, for the host, the launch plan of GGML_OP_RADAR_ATTN (which kernels run, their
// grids and threadgroup sizes, the scratch after dst). The semantics are those of the CPU kernels in
// ggml-cpu/radar.cpp; see docs/radar-ops.md in radar_gguf.
//
// Included by ggml-metal-impl.h (and with it by the kernels); plain C (the host part is also compiled as
// Objective-C), so that the layout is the same on both sides. Include guards instead of #pragma once: the
// embedded library inlines this file.
#ifndef GGML_METAL_RADAR_H
#define GGML_METAL_RADAR_H

#define RADAR_METAL_D_MAX      256  // head sizes 64, 128, 256: D/32 values per lane
#define RADAR_METAL_TILE       32   // attended cells per simdgroup step: one per lane
#define RADAR_METAL_MAX_SPLIT  32   // threadgroups per head in the split attention
#define RADAR_METAL_SEL_NSG    4    // simdgroups of the selection kernel
#define RADAR_METAL_SCORE_NSG  4    // simdgroups of the score and rescore kernels (one segment each)
#define RADAR_METAL_ATTN_NSG   2    // simdgroups of the attention kernel
#define RADAR_METAL_SEL_MAX    3072 // segments the selection ranks in threadgroup memory (32 KiB)

typedef struct {
    int32_t  D;         // head size of K
    int32_t  n_kv;
    int32_t  n_upd;     // listed segments per stream
    int32_t  n_seg_cap;
    int32_t  m;         // random features (RF)
    int32_t  L;         // segment length in cells
    int32_t  score;     // enum ggml_radar_score
    int32_t  W;         // summary row width
    int32_t  mask_f16;
    uint64_t nbk1;      // K [D, Hkv, n_kv, ns]
    uint64_t nbk2;
    uint64_t nbk3;
    uint64_t nbm_row;   // offset of the mask's last row (validity)
    uint64_t nbm3;
    uint64_t nbi0;      // ids [n_upd, ns]
    uint64_t nbi1;
    uint64_t nbo1;      // omega [D, m]
    uint64_t nbs1;      // s [W, Hkv, n_seg_cap, ns]
    uint64_t nbs2;
    uint64_t nbs3;
    float    scale;
} ggml_metal_kargs_radar_summarize;

typedef struct {
    int32_t  D;         // head size of K and V (equal)
    int32_t  n_kv;
    int32_t  n_hq;
    int32_t  n_hkv;
    int32_t  gqa;       // n_hq/n_hkv
    int32_t  n_seg_cap;
    int32_t  W;
    int32_t  m;
    int32_t  score;
    int32_t  L;
    int32_t  top_k;
    int32_t  n_sink;
    int32_t  n_recent;
    int32_t  shared;
    int32_t  n_rescore; // candidates of stage two, 0: one stage (set by the plan)
    int32_t  select;    // 1: the selection kernels ran and sel holds the kept segments
    int32_t  n_split;   // threadgroups per head in the attention
    int32_t  mask_f16;
    int32_t  s_f16;
    int32_t  has_sinks;
    int32_t  n_scores_b; // UNION: MINMAX's scores lie this many floats after MEANVAR's (set by the plan)
    uint64_t nbq2;      // q [D, 1, Hq, ns] f32
    uint64_t nbq3;
    uint64_t nbk1;      // k [D, n_kv, Hkv, ns]
    uint64_t nbk2;
    uint64_t nbk3;
    uint64_t nbv1;      // v [D, n_kv, Hkv, ns]
    uint64_t nbv2;
    uint64_t nbv3;
    uint64_t nbm3;      // mask [n_kv, >=1, 1, ns], row 0
    uint64_t nbs1;      // s [W, Hkv, n_seg_cap, ns]
    uint64_t nbs2;
    uint64_t nbs3;
    uint64_t nbi1;      // info [2, ns] i32
    uint64_t nbo1;      // omega [D, m]
    uint64_t nb1;       // dst [D, Hq, 1, ns] f32
    uint64_t nb3;
    float    scale;
    float    kq_scale;  // scale/softcap with a softcap
    float    softcap;
    float    max_bias;
    float    m0;
    float    m1;
    float    mass;      // mass target of stage two, 0: top_k (set by the plan)
    uint32_t n_head_log2;
} ggml_metal_kargs_radar_attn;

#ifndef __METAL_VERSION__
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

// the arguments of the summarize kernel from the tensors' shapes (ne) and strides (nb, bytes):
// k [D, Hkv, n_kv, ns], mask [n_kv, n_rows, 1, ns], ids [n_upd, ns], omega [D, m] or none, s [W, Hkv, n_seg_cap, ns]
static inline ggml_metal_kargs_radar_summarize ggml_metal_radar_summarize_kargs(
        const int64_t * ne_k, const size_t * nb_k, const int64_t * ne_m, const size_t * nb_m, int mask_f16,
        const int64_t * ne_i, const size_t * nb_i, const int64_t * ne_o, const size_t * nb_o,
        const int64_t * ne_s, const size_t * nb_s, int score, int L, float scale) {
    ggml_metal_kargs_radar_summarize a;
    memset(&a, 0, sizeof(a));
    a.D         = (int32_t) ne_k[0];
    a.n_kv      = (int32_t) ne_k[2];
    a.n_upd     = (int32_t) ne_i[0];
    a.n_seg_cap = (int32_t) ne_s[2];
    a.m         = ne_o ? (int32_t) ne_o[1] : 0;
    a.L         = L;
    a.score     = score;
    a.W         = (int32_t) ne_s[0];
    a.mask_f16  = mask_f16;
    a.nbk1      = nb_k[1];
    a.nbk2      = nb_k[2];
    a.nbk3      = nb_k[3];
    a.nbm_row   = (ne_m[1] - 1)*nb_m[1];
    a.nbm3      = nb_m[3];
    a.nbi0      = nb_i[0];
    a.nbi1      = nb_i[1];
    a.nbo1      = nb_o ? nb_o[1] : 0;
    a.nbs1      = nb_s[1];
    a.nbs2      = nb_s[2];
    a.nbs3      = nb_s[3];
    a.scale     = scale;
    return a;
}

// summarize: grid (n_upd, Hkv, ns) of one simdgroup; threadgroup memory: the key [D], the RF running max
// and sum [2m] each
static inline size_t ggml_metal_radar_summarize_smem(const ggml_metal_kargs_radar_summarize * a) {
    const size_t n = 4*((size_t) a->D + 4*(size_t) a->m);
    return n < 16 ? 16 : n;
}

// the arguments of the attention kernels from the tensors' shapes and strides and the op params
// (ggml_radar_attn): q [D, 1, Hq, ns], k/v [D, n_kv, Hkv, ns], mask [n_kv, >=1, 1, ns], s [W, Hkv, n_seg_cap, ns],
// info [2, ns], omega [D, m] or none, dst [D, Hq, 1, ns]. select, n_rescore and n_split come from the plan.
static inline ggml_metal_kargs_radar_attn ggml_metal_radar_attn_kargs(
        const int64_t * ne_q, const size_t * nb_q, const int64_t * ne_k, const size_t * nb_k, const size_t * nb_v,
        const size_t * nb_m, int mask_f16, const int64_t * ne_s, const size_t * nb_s, int s_f16,
        const size_t * nb_info, const int64_t * ne_o, const size_t * nb_o, int has_sinks, const size_t * nb_dst,
        int score, int L, int top_k, int n_sink, int n_recent, int shared, float scale, float max_bias, float softcap) {
    ggml_metal_kargs_radar_attn a;
    memset(&a, 0, sizeof(a));
    a.D         = (int32_t) ne_k[0];
    a.n_kv      = (int32_t) ne_k[1];
    a.n_hq      = (int32_t) ne_q[2];
    a.n_hkv     = (int32_t) ne_k[2];
    a.gqa       = a.n_hq/a.n_hkv;
    a.n_seg_cap = (int32_t) ne_s[2];
    a.W         = (int32_t) ne_s[0];
    a.m         = ne_o ? (int32_t) ne_o[1] : 0;
    a.score     = score;
    a.L         = L;
    a.top_k     = top_k;
    a.n_sink    = n_sink;
    a.n_recent  = n_recent;
    a.shared    = shared;
    a.mask_f16  = mask_f16;
    a.s_f16     = s_f16;
    a.has_sinks = has_sinks;
    a.nbq2 = nb_q[2];  a.nbq3 = nb_q[3];
    a.nbk1 = nb_k[1];  a.nbk2 = nb_k[2];  a.nbk3 = nb_k[3];
    a.nbv1 = nb_v[1];  a.nbv2 = nb_v[2];  a.nbv3 = nb_v[3];
    a.nbm3 = nb_m[3];
    a.nbs1 = nb_s[1];  a.nbs2 = nb_s[2];  a.nbs3 = nb_s[3];
    a.nbi1 = nb_info[1];
    a.nbo1 = nb_o ? nb_o[1] : 0;
    a.nb1  = nb_dst[1]; a.nb3 = nb_dst[3];
    a.scale    = scale;
    a.max_bias = max_bias;
    a.softcap  = softcap;
    a.kq_scale = softcap != 0.0f ? scale/softcap : scale;
    // ALiBi as ggml's soft_max
    uint32_t n_head_log2 = 1;
    while (2*n_head_log2 <= (uint32_t) a.n_hq) {
        n_head_log2 *= 2;
    }
    a.n_head_log2 = n_head_log2;
    a.m0 = powf(2.0f, -(max_bias       )/n_head_log2);
    a.m1 = powf(2.0f, -(max_bias/2.0f)/n_head_log2);
    return a;
}

// GGML_OP_RADAR_ATTN on Metal, per op: the kernels run in this order, each over the whole op
//   rf_query   (RF with a selection)      grid (Hq, ns)                   lq: the query's feature logs
//   score      (with a selection)         grid (n_seg_cap/NSG, Hq, ns)    scores of the candidates
//   select     (with a selection)         grid (n_items, ns)              stage one: kept segments, or the
//                                                                         candidates of stage two
//   rescore    (two stages)               grid (n_rescore/NSG, Hq, ns)    exact scores of the candidates
//   always     (two stages, mass target)  grid (Hq, ns)                   log mass of the always-attended cells
//   select2    (two stages)               grid (n_items, ns)              the top_k of the candidates (or, with
//                                                                         a mass target, as many as it takes)
//   attn                                  grid (n_split, Hq, ns)          partial softmax per split
//   combine                               grid (Hq, ns)                   merge of the splits, sinks, dst
// n_items = Hkv with a shared (GQA) selection, else Hq. Scratch lies after dst (in its allocation), in
// floats/ints of 4 bytes, at the offsets below.
struct ggml_metal_radar_attn_plan {
    bool   select;
    int    n_rescore;
    int    n_split;
    int    n_items;
    // scratch offsets in bytes from the end of dst, and its total size
    size_t off_scores; // f32 [ns, Hq, n_seg_cap] (UNION: MEANVAR's, then MINMAX's [ns, Hq, n_seg_cap])
    size_t off_lq;     // f32 [ns, Hq, 2m]
    size_t off_sel;    // i32 [ns, n_items, 1 + n_seg_cap]: count, then the kept segments
    size_t off_cand;   // i32 [ns, n_items, 1 + n_rescore]: count (-1: no selection), then candidates
    size_t off_exact;  // f32 [ns, Hq, n_rescore]
    size_t off_always; // f32 [ns, Hq] (mass target)
    size_t off_parts;  // f32 [ns, Hq, n_split, D + 2]: unnormalized output, max, sum
    size_t size;
    // threadgroups along x of the score and rescore grids
    int    n_tg_score;
    int    n_tg_rescore;
    // threadgroup memory in bytes
    size_t smem_score;
    size_t smem_select;
    size_t smem_attn;
};

// threadgroups per head the host asks of the split attention: about 256 over all heads, to fill the GPU
// (the plan bounds it by the attended cells and RADAR_METAL_MAX_SPLIT)
static inline int64_t ggml_metal_radar_attn_target_split(int64_t n_heads) {
    return n_heads >= 256 ? 1 : (256 + n_heads - 1)/n_heads;
}

// The plan of an op with ns streams: the selection kernels run only where a stream can have more than top_k
// candidates (n_seg is on the device, at most min(n_kv/L, n_seg_cap)); two stages when n_rescore_op (op
// param 9) exceeds top_k > 0, with the mass target mass_op (op param 10) if any; target_split:
// ggml_metal_radar_attn_target_split. Also sets a's select, n_rescore, mass and n_split.
static inline struct ggml_metal_radar_attn_plan ggml_metal_radar_attn_make_plan(
        ggml_metal_kargs_radar_attn * a, int64_t ns, int64_t n_rescore_op, float mass_op, int64_t target_split) {
    struct ggml_metal_radar_attn_plan p;
    memset(&p, 0, sizeof(p));
    const int64_t n_seg_max = a->n_seg_cap < a->n_kv/a->L ? a->n_seg_cap : a->n_kv/a->L;
    p.select    = n_seg_max > a->top_k;
    p.n_rescore = p.select && a->top_k > 0 && n_rescore_op > a->top_k ? (int) (n_rescore_op < n_seg_max ? n_rescore_op : n_seg_max) : 0;
    p.n_items   = a->shared ? a->n_hkv : a->n_hq;
    const float mass = p.n_rescore > 0 ? mass_op : 0.0f;

    // the attended cells: every cell without a selection, else about the sinks, the kept and recent
    // segments and the tail (< L, plus the KV view's padding); any split is correct (strided tiles)
    const int64_t n_recent_seg = ((int64_t) a->n_recent + a->L - 1)/a->L;
    int64_t n_att = a->n_kv;
    if (p.select) {
        const int64_t est = (int64_t) a->n_sink + (a->top_k + n_recent_seg + 1)*a->L + 256;
        n_att = est < n_att ? est : n_att;
    }
    const int64_t n_tiles = (n_att + RADAR_METAL_TILE*RADAR_METAL_ATTN_NSG - 1)/(RADAR_METAL_TILE*RADAR_METAL_ATTN_NSG);
    int64_t n_split = target_split;
    n_split = n_split < n_tiles ? n_split : n_tiles;
    n_split = n_split < RADAR_METAL_MAX_SPLIT ? n_split : RADAR_METAL_MAX_SPLIT;
    p.n_split = (int) (n_split > 1 ? n_split : 1);

    const size_t n_hq = (size_t) a->n_hq;
    size_t off = 0;
    const int n_parts = a->score == 5 ? 2 : 1; // UNION: two scores
    p.off_scores = off; off += p.select ? 4*n_parts*ns*n_hq*a->n_seg_cap : 0;
    p.off_lq     = off; off += p.select && a->score == 0 ? 4*ns*n_hq*2*a->m : 0;
    p.off_sel    = off; off += p.select ? 4*ns*p.n_items*(1 + (size_t) a->n_seg_cap) : 0;
    p.off_cand   = off; off += p.n_rescore ? 4*ns*p.n_items*(1 + (size_t) p.n_rescore) : 0;
    p.off_exact  = off; off += p.n_rescore ? 4*ns*n_hq*p.n_rescore : 0;
    p.off_always = off; off += mass > 0.0f ? 4*ns*n_hq : 0;
    p.off_parts  = off; off += 4*ns*n_hq*p.n_split*((size_t) a->D + 2);
    p.size = off;

    p.n_tg_score   = (a->n_seg_cap + RADAR_METAL_SCORE_NSG - 1)/RADAR_METAL_SCORE_NSG;
    p.n_tg_rescore = (p.n_rescore  + RADAR_METAL_SCORE_NSG - 1)/RADAR_METAL_SCORE_NSG;

    // score, rescore, always: the query in K's vec-dot type (D floats + D/32 block scales), 2 slots per
    // simdgroup; select: the ranked values and their segments (and with a mass target their order), 2 slots
    // per simdgroup for reductions; attn: the query, the weights
    // and cells of a tile per simdgroup, and the simdgroups' partial results for their merge
    p.smem_score  = 4*((size_t) a->D + a->D/32 + 2*RADAR_METAL_SCORE_NSG);
    p.smem_select = 4*(2*(size_t) a->n_seg_cap + 2*RADAR_METAL_SEL_NSG);
    if (mass > 0.0f && 3*(size_t) p.n_rescore > 2*(size_t) a->n_seg_cap) {
        p.smem_select = 4*(3*(size_t) p.n_rescore + 2*RADAR_METAL_SEL_NSG);
    }
    p.smem_select = p.smem_select < 16 ? 16 : p.smem_select;
    p.smem_attn   = 4*((size_t) a->D + a->D/32 + 2*RADAR_METAL_TILE*RADAR_METAL_ATTN_NSG + RADAR_METAL_ATTN_NSG*((size_t) a->D + 2));

    a->select    = p.select;
    a->n_rescore = p.n_rescore;
    a->n_split   = p.n_split;
    a->mass      = mass;
    a->n_scores_b = n_parts == 2 ? (int32_t) (ns*n_hq*a->n_seg_cap) : 0;
    return p;
}
#endif // __METAL_VERSION__

#endif // GGML_METAL_RADAR_H
