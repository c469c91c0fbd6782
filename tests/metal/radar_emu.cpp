// The Radar Metal kernels (kernels/radar.metal) run on the CPU through msl_emu.h, behind a C API for the
// tests (tests/test_metal_emulation.py). Inputs are plain arrays in ggml's layouts, given by shape (ne) and
// byte strides (nb) like ggml tensors; the kernels are looked up by the names the host code builds and
// dispatched with the arguments, grids, threadgroup sizes and scratch of the plan in ggml-metal-radar.h,
// the header ggml-metal-ops.cpp uses.
//
// Build: g++ -O2 -std=c++17 -pthread -shared -fPIC -I tests/metal -I tests/metal/shim
//        -I native/files/ggml/src/ggml-metal tests/metal/radar_emu.cpp
// RADAR_METAL_SRC (a quoted path) compiles another kernel source instead, e.g. a deliberately broken copy.
#include "msl_emu.h"

#ifdef RADAR_METAL_SRC
#include RADAR_METAL_SRC
#else
#include "kernels/radar.metal"
#endif

#include "msl_emu_end.h"

#include <cstdio>
#include <map>
#include <string>

namespace {

enum { T_F32 = 0, T_F16 = 1, T_Q8_0 = 8 };

const char * type_name(int t) {
    switch (t) {
        case T_F32:  return "f32";
        case T_F16:  return "f16";
        case T_Q8_0: return "q8_0";
        default:     return "?";
    }
}

// the instantiations of radar.metal by their host names
const std::map<std::string, radar_summarize_t *> k_summarize = {
    { "kernel_radar_summarize_f32_f32",  &kernel_radar_summarize<float,      float> },
    { "kernel_radar_summarize_f32_f16",  &kernel_radar_summarize<float,      half>  },
    { "kernel_radar_summarize_f16_f32",  &kernel_radar_summarize<half,       float> },
    { "kernel_radar_summarize_f16_f16",  &kernel_radar_summarize<half,       half>  },
    { "kernel_radar_summarize_q8_0_f32", &kernel_radar_summarize<block_q8_0, float> },
    { "kernel_radar_summarize_q8_0_f16", &kernel_radar_summarize<block_q8_0, half>  },
};
const std::map<std::string, radar_score_t *> k_score = {
    { "kernel_radar_score_f32_f32",  &kernel_radar_score<float,      float> },
    { "kernel_radar_score_f32_f16",  &kernel_radar_score<float,      half>  },
    { "kernel_radar_score_f16_f32",  &kernel_radar_score<half,       float> },
    { "kernel_radar_score_f16_f16",  &kernel_radar_score<half,       half>  },
    { "kernel_radar_score_q8_0_f32", &kernel_radar_score<block_q8_0, float> },
    { "kernel_radar_score_q8_0_f16", &kernel_radar_score<block_q8_0, half>  },
};
const std::map<std::string, radar_rescore_t *> k_rescore = {
    { "kernel_radar_rescore_f32",  &kernel_radar_rescore<float>      },
    { "kernel_radar_rescore_f16",  &kernel_radar_rescore<half>       },
    { "kernel_radar_rescore_q8_0", &kernel_radar_rescore<block_q8_0> },
};
const std::map<std::string, radar_always_t *> k_always = {
    { "kernel_radar_always_f32",  &kernel_radar_always<float>      },
    { "kernel_radar_always_f16",  &kernel_radar_always<half>       },
    { "kernel_radar_always_q8_0", &kernel_radar_always<block_q8_0> },
};
const std::map<std::string, radar_attn_t *> k_attn = {
    { "kernel_radar_attn_f32_f32",   &kernel_radar_attn<float,      float>      },
    { "kernel_radar_attn_f32_f16",   &kernel_radar_attn<float,      half>       },
    { "kernel_radar_attn_f32_q8_0",  &kernel_radar_attn<float,      block_q8_0> },
    { "kernel_radar_attn_f16_f32",   &kernel_radar_attn<half,       float>      },
    { "kernel_radar_attn_f16_f16",   &kernel_radar_attn<half,       half>       },
    { "kernel_radar_attn_f16_q8_0",  &kernel_radar_attn<half,       block_q8_0> },
    { "kernel_radar_attn_q8_0_f32",  &kernel_radar_attn<block_q8_0, float>      },
    { "kernel_radar_attn_q8_0_f16",  &kernel_radar_attn<block_q8_0, half>       },
    { "kernel_radar_attn_q8_0_q8_0", &kernel_radar_attn<block_q8_0, block_q8_0> },
};
template <typename M> typename M::mapped_type find(const M & m, const std::string & name) {
    auto it = m.find(name);
    if (it == m.end()) {
        throw std::runtime_error("no kernel " + name);
    }
    return it->second;
}

uint3 u3(msl::dim3 g) {
    return uint3{ g.x, g.y, g.z };
}

int fail(char * err, int err_len, const char * msg) {
    if (err && err_len > 0) {
        snprintf(err, err_len, "%s", msg);
    }
    return 1;
}

} // namespace

extern "C" {

// every host name the harness can dispatch, one per line
const char * radar_emu_kernel_names(void) {
    static std::string names;
    if (names.empty()) {
        for (auto & e : k_summarize) names += e.first + "\n";
        for (auto & e : k_score)     names += e.first + "\n";
        for (auto & e : k_rescore)   names += e.first + "\n";
        for (auto & e : k_always)    names += e.first + "\n";
        for (auto & e : k_attn)      names += e.first + "\n";
        names += "kernel_radar_rf_query\nkernel_radar_select\nkernel_radar_select2\nkernel_radar_attn_combine\n";
    }
    return names.c_str();
}

// GGML_OP_RADAR_SUMMARIZE: s is written in place. Returns 0, or 1 with a message in err.
int radar_emu_summarize(
        int k_type, const void * k, const int64_t * ne_k, const size_t * nb_k,
        int mask_type, const void * mask, const int64_t * ne_m, const size_t * nb_m,
        const int32_t * ids, const int64_t * ne_i, const size_t * nb_i,
        const float * omega, const int64_t * ne_o, const size_t * nb_o,
        int s_type, void * s, const int64_t * ne_s, const size_t * nb_s,
        int score, int L, float scale, char * err, int err_len) {
    try {
        ggml_metal_kargs_radar_summarize args = ggml_metal_radar_summarize_kargs(
            ne_k, nb_k, ne_m, nb_m, mask_type == T_F16, ne_i, nb_i, omega ? ne_o : nullptr, omega ? nb_o : nullptr,
            ne_s, nb_s, score, L, scale);
        char name[256];
        snprintf(name, sizeof(name), "kernel_radar_summarize_%s_%s", type_name(k_type), type_name(s_type));
        radar_summarize_t * fn = find(k_summarize, name);
        msl::dispatch({ (uint32_t) ne_i[0], (uint32_t) ne_k[1], (uint32_t) ne_k[3] }, 32,
            ggml_metal_radar_summarize_smem(&args), [&](msl::dim3 g, int tid, void * sh) {
                fn(args, (const char *) k, (const char *) mask, (const char *) ids, (const char *) omega, (char *) s,
                   (float *) sh, u3(g), (ushort) (tid % 32));
            });
    } catch (const std::exception & e) {
        return fail(err, err_len, e.what());
    }
    return 0;
}

// GGML_OP_RADAR_ATTN: dst [D, Hq, 1, ns] f32. target_split: threadgroups per head to ask the plan for (<= 0:
// what the host asks for).
// sel_out (optional, i32 [ns, n_items, 1 + n_seg_cap]): the kept segments of each item, as the selection
// kernels left them (count -1: no selection ran). Returns 0, or 1 with a message in err.
int radar_emu_attn(
        const float * q, const int64_t * ne_q, const size_t * nb_q,
        int k_type, const void * k, const int64_t * ne_k, const size_t * nb_k,
        int v_type, const void * v, const size_t * nb_v,
        int mask_type, const void * mask, const size_t * nb_m,
        int s_type, const void * s, const int64_t * ne_s, const size_t * nb_s,
        const int32_t * info, const size_t * nb_info,
        const float * omega, const int64_t * ne_o, const size_t * nb_o,
        const float * sinks,
        float * dst, const size_t * nb_dst,
        int score, int L, int top_k, int n_sink, int n_recent, int shared, float scale, float max_bias, float softcap,
        int n_rescore, float mass, int target_split, int32_t * sel_out, char * err, int err_len) {
    try {
        const int64_t ns = ne_q[3];
        ggml_metal_kargs_radar_attn args = ggml_metal_radar_attn_kargs(
            ne_q, nb_q, ne_k, nb_k, nb_v, nb_m, mask_type == T_F16, ne_s, nb_s, s_type == T_F16, nb_info,
            omega ? ne_o : nullptr, omega ? nb_o : nullptr, sinks != nullptr, nb_dst,
            score, L, top_k, n_sink, n_recent, shared, scale, max_bias, softcap);
        if (target_split <= 0) {
            target_split = (int) ggml_metal_radar_attn_target_split(ne_q[2]*ns); // what the host asks for
        }
        const ggml_metal_radar_attn_plan plan = ggml_metal_radar_attn_make_plan(&args, ns, n_rescore, mass, target_split);

        std::vector<float> scratch(plan.size/4 + 1);
        char * base = (char *) scratch.data();
        float   * scores = (float *)   (base + plan.off_scores);
        float   * lq     = (float *)   (base + plan.off_lq);
        int32_t * sel    = (int32_t *) (base + plan.off_sel);
        int32_t * cand   = (int32_t *) (base + plan.off_cand);
        float   * exact  = (float *)   (base + plan.off_exact);
        float   * always = (float *)   (base + plan.off_always);
        float   * parts  = (float *)   (base + plan.off_parts);

        const uint32_t hq = (uint32_t) args.n_hq;
        const uint32_t ni = (uint32_t) plan.n_items;
        const char * cq = (const char *) q;
        const char * ck = (const char *) k;
        const char * cv = (const char *) v;
        const char * cm = (const char *) mask;
        const char * ci = (const char *) info;

        char name[256];
        if (plan.select) {
            if (score == 0) {
                msl::dispatch({ hq, (uint32_t) ns, 1 }, 32, 0, [&](msl::dim3 g, int tid, void *) {
                    kernel_radar_rf_query(args, cq, (const char *) omega, lq, u3(g), (ushort) (tid % 32));
                });
            }
            snprintf(name, sizeof(name), "kernel_radar_score_%s_%s", type_name(k_type), type_name(s_type));
            radar_score_t * fs = find(k_score, name);
            msl::dispatch({ (uint32_t) plan.n_tg_score, hq, (uint32_t) ns }, 32*RADAR_METAL_SCORE_NSG, plan.smem_score,
                [&](msl::dim3 g, int tid, void * sh) {
                    fs(args, cq, ck, cm, (const char *) s, ci, lq, scores, (float *) sh, u3(g), (ushort) (tid/32),
                       (ushort) (tid % 32), (ushort) RADAR_METAL_SCORE_NSG);
                });
            msl::dispatch({ ni, (uint32_t) ns, 1 }, 32*RADAR_METAL_SEL_NSG, plan.smem_select,
                [&](msl::dim3 g, int tid, void * sh) {
                    kernel_radar_select(args, ci, scores, sel, cand, (float *) sh, u3(g), (ushort) tid, (ushort) (tid/32),
                                        (ushort) (tid % 32), (ushort) RADAR_METAL_SEL_NSG);
                });
            if (plan.n_rescore > 0) {
                snprintf(name, sizeof(name), "kernel_radar_rescore_%s", type_name(k_type));
                radar_rescore_t * fr = find(k_rescore, name);
                msl::dispatch({ (uint32_t) plan.n_tg_rescore, hq, (uint32_t) ns }, 32*RADAR_METAL_SCORE_NSG, plan.smem_score,
                    [&](msl::dim3 g, int tid, void * sh) {
                        fr(args, cq, ck, cm, cand, exact, (float *) sh, u3(g), (ushort) (tid/32), (ushort) (tid % 32),
                           (ushort) RADAR_METAL_SCORE_NSG);
                    });
                if (args.mass > 0.0f) {
                    snprintf(name, sizeof(name), "kernel_radar_always_%s", type_name(k_type));
                    radar_always_t * fw = find(k_always, name);
                    msl::dispatch({ hq, (uint32_t) ns, 1 }, 32*RADAR_METAL_SCORE_NSG, plan.smem_score,
                        [&](msl::dim3 g, int tid, void * sh) {
                            fw(args, cq, ck, cm, ci, sinks, always, (float *) sh, u3(g), (ushort) (tid/32), (ushort) (tid % 32),
                               (ushort) RADAR_METAL_SCORE_NSG);
                        });
                }
                msl::dispatch({ ni, (uint32_t) ns, 1 }, 32*RADAR_METAL_SEL_NSG, plan.smem_select,
                    [&](msl::dim3 g, int tid, void * sh) {
                        kernel_radar_select2(args, ci, cand, exact, always, sel, (float *) sh, u3(g), (ushort) tid,
                                             (ushort) (tid/32), (ushort) (tid % 32), (ushort) RADAR_METAL_SEL_NSG);
                    });
            }
        }
        if (sel_out) {
            const size_t n = (size_t) ns*plan.n_items*(1 + args.n_seg_cap);
            for (size_t i = 0; i < n; ++i) {
                sel_out[i] = plan.select ? sel[i] : (i % (1 + args.n_seg_cap) == 0 ? -1 : 0);
            }
        }

        snprintf(name, sizeof(name), "kernel_radar_attn_%s_%s", type_name(k_type), type_name(v_type));
        radar_attn_t * fa = find(k_attn, name);
        msl::dispatch({ (uint32_t) plan.n_split, hq, (uint32_t) ns }, 32*RADAR_METAL_ATTN_NSG, plan.smem_attn,
            [&](msl::dim3 g, int tid, void * sh) {
                fa(args, cq, ck, cv, cm, ci, sel, parts, (float *) sh, u3(g), (ushort) (tid/32), (ushort) (tid % 32),
                   (ushort) RADAR_METAL_ATTN_NSG);
            });
        msl::dispatch({ hq, (uint32_t) ns, 1 }, 32, 0, [&](msl::dim3 g, int tid, void *) {
            kernel_radar_attn_combine(args, parts, sinks, (char *) dst, u3(g), (ushort) (tid % 32));
        });
    } catch (const std::exception & e) {
        return fail(err, err_len, e.what());
    }
    return 0;
}

} // extern "C"
