// Radar sparse decode attention on CUDA: the entry points of GGML_OP_RADAR_SUMMARIZE and GGML_OP_RADAR_ATTN,
// what they support, and the launch plan of the kernels. The semantics are those of the CPU kernels in
// ggml-cpu/radar.cpp (ggml_compute_forward_radar_summarize / _attn), see also docs/radar-ops.md in radar_gguf.
//
//   radar-summarize.cu: GGML_OP_RADAR_SUMMARIZE, one block per (listed segment, KV head, stream)
//   radar-select.cu:    GGML_OP_RADAR_ATTN steps 1-3, segment scores and the top-k selection (one or two stages)
//   radar-attn.cu:      GGML_OP_RADAR_ATTN steps 4-5, attention over the kept cells and the merge of the split
//   radar-common.cuh:   parameters and device code they share
//
// Steps 1-3 are left out when the shapes allow no stream more than top_k candidates. The launch
// configuration depends on shapes and op params only and nothing is read back to the host, so the op can
// be captured in a CUDA graph.
#include "radar.cuh"
#include "radar-common.cuh"

static bool radar_kv_type_supported(const ggml_type type) {
    return type == GGML_TYPE_F32 || type == GGML_TYPE_F16 || type == GGML_TYPE_Q8_0;
}

static bool radar_head_size_supported(const int64_t D) {
    return D == 64 || D == 128 || D == 256;
}

// rows are read with 16-byte loads (F32, F16) or 2-byte loads (Q8_0)
static bool radar_strides_supported(const ggml_tensor * t) {
    const size_t align = t->type == GGML_TYPE_Q8_0 ? 2 : 16;
    return t->nb[0] == ggml_type_size(t->type) && t->nb[1] % align == 0 && t->nb[2] % align == 0 && t->nb[3] % align == 0;
}

static bool radar_omega_supported(const ggml_tensor * omega, const int score, const int64_t D) {
    if (score != GGML_RADAR_SCORE_RF) {
        return true;
    }
    return omega && omega->type == GGML_TYPE_F32 && omega->ne[0] == D && ggml_is_contiguous(omega);
}

bool ggml_cuda_radar_supported(const ggml_tensor * op) {
#ifndef RADAR_CUDA_AVAILABLE
    GGML_UNUSED(op);
    return false;
#endif // RADAR_CUDA_AVAILABLE
    switch (op->op) {
        case GGML_OP_RADAR_SUMMARIZE: {
            const ggml_tensor * s     = op->src[0];
            const ggml_tensor * k     = op->src[1];
            const ggml_tensor * mask  = op->src[2];
            const ggml_tensor * ids   = op->src[3];
            const ggml_tensor * omega = op->src[4];
            const int score = ggml_get_op_params_i32(op, 0);
            return score >= 0 && score < GGML_RADAR_SCORE_COUNT &&
                (s->type == GGML_TYPE_F32 || s->type == GGML_TYPE_F16) && ggml_is_contiguous(s) &&
                radar_kv_type_supported(k->type) && radar_head_size_supported(k->ne[0]) && radar_strides_supported(k) &&
                (mask->type == GGML_TYPE_F16 || mask->type == GGML_TYPE_F32) && mask->nb[0] == ggml_type_size(mask->type) &&
                ids->type == GGML_TYPE_I32 &&
                radar_omega_supported(omega, score, k->ne[0]);
        }
        case GGML_OP_RADAR_ATTN: {
            const ggml_tensor * q     = op->src[0];
            const ggml_tensor * k     = op->src[1];
            const ggml_tensor * v     = op->src[2];
            const ggml_tensor * mask  = op->src[3];
            const ggml_tensor * s     = op->src[4];
            const ggml_tensor * info  = op->src[5];
            const ggml_tensor * omega = op->src[6];
            const ggml_tensor * sinks = op->src[7];
            const int score = ggml_get_op_params_i32(op, 0);
            return score >= 0 && score < GGML_RADAR_SCORE_COUNT &&
                q->type == GGML_TYPE_F32 && q->nb[0] == sizeof(float) &&
                radar_kv_type_supported(k->type) && radar_kv_type_supported(v->type) &&
                radar_head_size_supported(k->ne[0]) && v->ne[0] == k->ne[0] &&
                radar_strides_supported(k) && radar_strides_supported(v) &&
                (mask->type == GGML_TYPE_F16 || mask->type == GGML_TYPE_F32) && mask->nb[0] == ggml_type_size(mask->type) &&
                (s->type == GGML_TYPE_F32 || s->type == GGML_TYPE_F16) && s->nb[0] == ggml_type_size(s->type) &&
                info->type == GGML_TYPE_I32 &&
                radar_omega_supported(omega, score, k->ne[0]) &&
                (sinks == nullptr || sinks->type == GGML_TYPE_F32) &&
                // a mass target sorts its candidates in shared memory
                (ggml_get_op_params_f32(op, 10) == 0.0f || ggml_get_op_params_i32(op, 9) <= RADAR_MASS_MAX_CAND) &&
                // an adaptive candidate count (ggml_radar_attn_set_rescore_adaptive) runs on the CPU only
                ggml_get_op_params_f32(op, 12) == 0.0f &&
                op->type == GGML_TYPE_F32 && ggml_is_contiguous(op);
        }
        default:
            return false;
    }
}

void ggml_cuda_op_radar_summarize(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
#ifdef RADAR_CUDA_AVAILABLE
    const ggml_tensor * s     = dst->src[0];
    const ggml_tensor * k     = dst->src[1];
    const ggml_tensor * mask  = dst->src[2];
    const ggml_tensor * ids   = dst->src[3];
    const ggml_tensor * omega = dst->src[4];

    GGML_ASSERT(ggml_cuda_radar_supported(dst));
    GGML_ASSERT(RADAR_SUM_NTHREADS % k->ne[0] == 0 && k->ne[0] <= RADAR_D_MAX);

    radar_summarize_params p = {};
    p.k         = (const char *) k->data;
    p.mask      = (const char *) mask->data;
    p.ids       = (const char *) ids->data;
    p.omega     = omega ? (const char *) omega->data : nullptr;
    p.s         = (char *) dst->data; // dst is a view of s
    p.nbk1      = k->nb[1];
    p.nbk2      = k->nb[2];
    p.nbk3      = k->nb[3];
    p.nbm_row   = (mask->ne[1] - 1)*mask->nb[1];
    p.nbm3      = mask->nb[3];
    p.nbi0      = ids->nb[0];
    p.nbi1      = ids->nb[1];
    p.nbo1      = omega ? omega->nb[1] : 0;
    p.nbs1      = s->nb[1];
    p.nbs2      = s->nb[2];
    p.nbs3      = s->nb[3];
    p.D         = k->ne[0];
    p.n_kv      = k->ne[2];
    p.n_seg_cap = s->ne[2];
    p.m         = omega ? omega->ne[1] : 0;
    p.L         = ggml_get_op_params_i32(dst, 1);
    p.score     = ggml_get_op_params_i32(dst, 0);
    p.mask_f16  = mask->type == GGML_TYPE_F16;
    p.s_f16     = s->type == GGML_TYPE_F16;
    p.scale     = ggml_get_op_params_f32(dst, 2);

    GGML_ASSERT(p.score != GGML_RADAR_SCORE_RF || p.m > 0);

    const dim3 grid(ids->ne[0], k->ne[1], k->ne[3]);
    if (ggml_nelements(ids) == 0 || k->ne[1] == 0) {
        return;
    }

    radar_summarize_launch(k->type, p, grid, ctx.stream());
#else
    GGML_UNUSED_VARS(ctx, dst);
    GGML_ABORT("fatal error");
#endif // RADAR_CUDA_AVAILABLE
}

void ggml_cuda_op_radar_attn(ggml_backend_cuda_context & ctx, ggml_tensor * dst) {
#ifdef RADAR_CUDA_AVAILABLE
    const ggml_tensor * q     = dst->src[0];
    const ggml_tensor * k     = dst->src[1];
    const ggml_tensor * v     = dst->src[2];
    const ggml_tensor * mask  = dst->src[3];
    const ggml_tensor * s     = dst->src[4];
    const ggml_tensor * info  = dst->src[5];
    const ggml_tensor * omega = dst->src[6];
    const ggml_tensor * sinks = dst->src[7];

    GGML_ASSERT(ggml_cuda_radar_supported(dst));

    const int     D     = k->ne[0];
    const int64_t n_kv  = k->ne[1];
    const int64_t n_hq  = q->ne[2];
    const int64_t n_hkv = k->ne[2];
    const int64_t ns    = q->ne[3];

    radar_attn_params p = {};
    p.q        = (const char *) q->data;
    p.k        = (const char *) k->data;
    p.v        = (const char *) v->data;
    p.mask     = (const char *) mask->data;
    p.s        = (const char *) s->data;
    p.info     = (const char *) info->data;
    p.omega    = omega ? (const char *) omega->data : nullptr;
    p.sinks    = sinks ? (const float *) sinks->data : nullptr;
    p.dst      = (char *) dst->data;

    p.nbq2 = q->nb[2];    p.nbq3 = q->nb[3];
    p.nbk1 = k->nb[1];    p.nbk2 = k->nb[2];    p.nbk3 = k->nb[3];
    p.nbv1 = v->nb[1];    p.nbv2 = v->nb[2];    p.nbv3 = v->nb[3];
    p.nbm3 = mask->nb[3];
    p.nbs1 = s->nb[1];    p.nbs2 = s->nb[2];    p.nbs3 = s->nb[3];
    p.nbi1 = info->nb[1];
    p.nbo1 = omega ? omega->nb[1] : 0;
    p.nb1  = dst->nb[1];  p.nb3  = dst->nb[3];

    p.n_kv      = n_kv;
    p.n_hq      = n_hq;
    p.n_hkv     = n_hkv;
    p.gqa       = n_hq/n_hkv;
    p.n_seg_cap = s->ne[2];
    p.W         = s->ne[0];
    p.m         = omega ? omega->ne[1] : 0;
    p.score     = ggml_get_op_params_i32(dst, 0);
    p.L         = ggml_get_op_params_i32(dst, 1);
    p.top_k     = ggml_get_op_params_i32(dst, 2);
    p.n_sink    = ggml_get_op_params_i32(dst, 3);
    p.n_recent  = ggml_get_op_params_i32(dst, 4);
    p.shared    = ggml_get_op_params_i32(dst, 5) != 0;
    p.scale     = ggml_get_op_params_f32(dst, 6);
    p.max_bias  = ggml_get_op_params_f32(dst, 7);
    p.softcap   = ggml_get_op_params_f32(dst, 8);
    p.kq_scale  = p.softcap != 0.0f ? p.scale/p.softcap : p.scale;
    p.mask_f16  = mask->type == GGML_TYPE_F16;
    p.s_f16     = s->type == GGML_TYPE_F16;

    p.n_head_log2 = 1u << (uint32_t) floorf(log2f((float) n_hq));
    p.m0 = powf(2.0f, -(p.max_bias       ) / p.n_head_log2);
    p.m1 = powf(2.0f, -(p.max_bias / 2.0f) / p.n_head_log2);

    GGML_ASSERT(p.score != GGML_RADAR_SCORE_RF || p.m > 0);

    if (ggml_nelements(dst) == 0) {
        return;
    }

    // selection is needed only where a stream can have more than top_k candidates (n_seg is on the device)
    const int64_t n_seg_max   = std::min(n_kv/p.L, (int64_t) p.n_seg_cap);
    const bool    need_select = n_seg_max > p.top_k;

    // two-stage selection: the n_rescore best candidates by score, then the top_k of them by exact score
    // (with top_k = 0 nothing is kept whatever the scores: one stage)
    const int n_rescore = ggml_get_op_params_i32(dst, 9);
    p.n_rescore = need_select && p.top_k > 0 && n_rescore > p.top_k ? (int) std::min((int64_t) n_rescore, n_seg_max) : 0;
    // mass target: stage two keeps from top_k up to all n_rescore candidates, chosen by radar_select_mass. Per
    // head it also merges the outputs radar_rescore wrote for them: every kept cell is read once, no
    // radar_attn_kernel. Shared, radar_rescore reads the candidates' keys once for the group and scores them
    // only; radar_attn_kernel attends the kept segments.
    p.mass = p.n_rescore > 0 ? ggml_get_op_params_f32(dst, 10) : 0.0f;
    p.merge         = p.mass > 0.0f && !p.shared; // the output is written by radar_select_mass
    p.rescore_heads = !p.shared || p.gqa == 1 ? 1 : p.gqa <= 4 ? 4 : 8;

    // scratch; allocated in the order of declaration (the pool frees in reverse order)
    ggml_cuda_pool & pool = ctx.pool();
    ggml_cuda_pool_alloc<float>  scores_alloc(pool);
    ggml_cuda_pool_alloc<int>    sel_alloc(pool);
    ggml_cuda_pool_alloc<int>    cand_alloc(pool);
    ggml_cuda_pool_alloc<float>  exact_alloc(pool);
    ggml_cuda_pool_alloc<float>  always_alloc(pool);
    ggml_cuda_pool_alloc<float>  cpart_alloc(pool);
    ggml_cuda_pool_alloc<float>  comb_alloc(pool);
    ggml_cuda_pool_alloc<float>  lq_alloc(pool);
    ggml_cuda_pool_alloc<float>  parts_alloc(pool);
    ggml_cuda_pool_alloc<float2> meta_alloc(pool);
    ggml_cuda_pool_alloc<unsigned int> counters_alloc(pool);

    if (need_select) {
        const int64_t n_recent_seg = ((int64_t) p.n_recent + p.L - 1)/p.L;
        // radar_attn_kernel selects the top_k itself (from the scores, or with two stages from the exact
        // scores of the candidates) when the selection is per head and small, and its keys fit
        const int64_t n_attn_keys = p.n_rescore > 0 ? p.n_rescore : p.n_seg_cap;
        p.select_smem    = p.n_seg_cap*sizeof(uint32_t) <= RADAR_SELECT_SMEM_MAX;
        // (not UNION's one stage: its top_k come from two scores, which radar_select merges)
        p.select_in_attn = !p.shared && p.mass == 0.0f && n_attn_keys*sizeof(uint32_t) <= RADAR_SELECT_SMEM_MAX &&
            p.top_k <= RADAR_SELECT_SMALL_K && p.top_k + n_recent_seg <= RADAR_ATTN_SEL_MAX &&
            (p.n_rescore > 0 || p.score != GGML_RADAR_SCORE_UNION);
        const int64_t n_items = p.shared ? n_hkv : n_hq;
        // UNION: MEANVAR's scores, then MINMAX's (the same for the group scores)
        const int64_t n_parts = p.score == GGML_RADAR_SCORE_UNION ? 2 : 1;
        p.scores = scores_alloc.alloc(n_parts*ns*n_hq*p.n_seg_cap);
        p.scores_b = n_parts == 2 ? p.scores + ns*n_hq*p.n_seg_cap : nullptr;
        if (!p.select_in_attn && !p.merge) {
            p.sel = sel_alloc.alloc(ns*n_items*(p.n_seg_cap + 1));
        }
        if (p.n_rescore > 0) {
            p.cand  = cand_alloc.alloc(ns*n_items*(p.n_rescore + 1));
            p.exact = exact_alloc.alloc(ns*n_hq*p.n_rescore);
            if (p.mass > 0.0f) {
                p.always = always_alloc.alloc(ns*n_hq);
            }
            if (p.merge) {
                p.cpart = cpart_alloc.alloc(ns*n_hq*(p.n_rescore + 1)*D);
            }
        }
        if (p.shared) {
            p.comb   = comb_alloc.alloc(n_parts*ns*n_hkv*p.n_seg_cap);
            p.comb_b = n_parts == 2 ? p.comb + ns*n_hkv*p.n_seg_cap : nullptr;
        }
        if (p.score == GGML_RADAR_SCORE_RF) {
            p.lq = lq_alloc.alloc(ns*n_hq*2*p.m);
        }
    }

    // split of each head over blocks: enough blocks to fill the GPU, but not more than the attended cells
    // need. Those are only known on the device (blocks past them return at once); with a selection they
    // are about n_sink + (top_k + recent segments)*L + the unsummarized tail (< L, plus the KV view's
    // padding of up to 256 cells). Any split is correct: each block loops over every n_split-th tile.
    const int     nsm       = ggml_cuda_info().devices[ctx.device].nsm;
    int64_t       n_att_est = n_kv + std::min((int64_t) p.n_sink, n_kv);
    if (need_select) {
        const int64_t n_recent_seg = ((int64_t) p.n_recent + p.L - 1)/p.L;
        const int64_t n_kept = p.mass > 0.0f ? std::min(2*(int64_t) p.top_k, (int64_t) p.n_rescore) : p.top_k; // about, with a mass target
        n_att_est = std::min(n_att_est, p.n_sink + (n_kept + n_recent_seg + 1)*p.L + 256);
    }
    const int64_t n_tiles   = (n_att_est + RADAR_ATTN_TILE - 1)/RADAR_ATTN_TILE;
    const int64_t n_heads   = n_hq*ns;
    int64_t       n_split   = (nsm*RADAR_ATTN_BLOCKS_PER_SM + n_heads - 1)/n_heads;
    n_split = std::max((int64_t) 1, std::min({n_split, n_tiles, (int64_t) RADAR_ATTN_MAX_SPLIT}));

    // MEAN, MEANVAR, MINMAX, UNION: one score kernel per KV head for all of its query heads; the last block
    // of each head merges the split (no combine kernel), its counters zeroed by that score kernel
    const bool score_gqa = need_select &&
        (p.score == GGML_RADAR_SCORE_MEAN || p.score == GGML_RADAR_SCORE_MEANVAR || p.score == GGML_RADAR_SCORE_MINMAX ||
         p.score == GGML_RADAR_SCORE_UNION);

    if (n_split > 1 && !p.merge) {
        p.dst_parts = parts_alloc.alloc(n_heads*n_split*D);
        p.dst_meta  = meta_alloc.alloc(n_heads*n_split);
        if (score_gqa) {
            p.counters = counters_alloc.alloc(n_heads); // zeroed by radar_score_summary_gqa
        }
    }

    cudaStream_t stream = ctx.stream();
    if (need_select) {
        radar_score_select_launch(D, k->type, v->type, p, score_gqa, ns, stream);
    }
    if (!p.merge) {
        radar_attn_launch(D, k->type, v->type, p, n_split, ns, stream);
    }
#else
    GGML_UNUSED_VARS(ctx, dst);
    GGML_ABORT("fatal error");
#endif // RADAR_CUDA_AVAILABLE
}
