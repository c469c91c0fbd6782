// CUPTI activity tracer for scripts/device_cuda.sh trace: the CUDA driver loads it into any program
// (CUDA_INJECTION64_PATH) and it records every kernel, copy and runtime call with start and end times.
#include <cupti.h>
#include <cxxabi.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <unordered_map>
static FILE *g_out;
static std::mutex g_mu;
static std::unordered_map<const char *, int> g_ptr_id;
static std::unordered_map<std::string, int> g_name_id;
static int name_id(const char *mangled) {
    auto it = g_ptr_id.find(mangled);
    if (it != g_ptr_id.end()) return it->second;
    int st = 0;
    char *d = abi::__cxa_demangle(mangled, nullptr, nullptr, &st);
    std::string s = (st == 0 && d) ? d : mangled;
    free(d);
    if (s.rfind("void ", 0) == 0) s = s.substr(5);
    int depth = 0;  // drop the parameter list: the first '(' outside template brackets
    for (size_t i = 0; i < s.size(); i++) {
        if (s[i] == '<') depth++;
        else if (s[i] == '>') depth--;
        else if (s[i] == '(' && depth == 0 && i > 0) { s.resize(i); break; }
    }
    for (auto &c : s) if (c == '\n') c = ' ';
    auto jt = g_name_id.find(s);
    int id;
    if (jt == g_name_id.end()) {
        id = (int)g_name_id.size();
        g_name_id[s] = id;
        fprintf(g_out, "N,%d,%s\n", id, s.c_str());
    } else id = jt->second;
    g_ptr_id[mangled] = id;
    return id;
}
static void CUPTIAPI buf_requested(uint8_t **buf, size_t *size, size_t *max_records) {
    *size = 16 << 20;
    *buf = (uint8_t *)aligned_alloc(8, *size);
    *max_records = 0;
}
static void CUPTIAPI buf_completed(CUcontext, uint32_t, uint8_t *buf, size_t, size_t valid) {
    std::lock_guard<std::mutex> lock(g_mu);
    CUpti_Activity *r = nullptr;
    while (cuptiActivityGetNextRecord(buf, valid, &r) == CUPTI_SUCCESS) {
        switch (r->kind) {
            case CUPTI_ACTIVITY_KIND_KERNEL:
            case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL: {
                auto *k = (CUpti_ActivityKernel10 *)r;
                int id = name_id(k->name);
                fprintf(g_out, "K,%llu,%llu,%u,%d\n", (unsigned long long)k->start, (unsigned long long)k->end, k->graphId, id);
                break;
            }
            case CUPTI_ACTIVITY_KIND_MEMCPY: {
                auto *m = (CUpti_ActivityMemcpy6 *)r;
                fprintf(g_out, "M,%llu,%llu,%u,%llu,%u\n", (unsigned long long)m->start, (unsigned long long)m->end,
                        (unsigned)m->copyKind, (unsigned long long)m->bytes, m->graphId);
                break;
            }
            case CUPTI_ACTIVITY_KIND_MEMSET: {
                auto *m = (CUpti_ActivityMemset4 *)r;
                fprintf(g_out, "S,%llu,%llu,%llu,%u\n", (unsigned long long)m->start, (unsigned long long)m->end,
                        (unsigned long long)m->bytes, m->graphId);
                break;
            }
            case CUPTI_ACTIVITY_KIND_RUNTIME: {
                auto *a = (CUpti_ActivityAPI *)r;
                const char *n = nullptr;
                cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &n);
                fprintf(g_out, "R,%llu,%llu,%s\n", (unsigned long long)a->start, (unsigned long long)a->end, n ? n : "?");
                break;
            }
            default: break;
        }
    }
    free(buf);
}
static void at_exit() {
    cuptiActivityFlushAll(1);
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_out) fflush(g_out);
}
extern "C" int InitializeInjection(void) {
    const char *path = getenv("CUPTI_TRACE_OUT");
    g_out = fopen(path ? path : "cupti_trace.csv", "w");
    if (!g_out) return 0;
    setvbuf(g_out, nullptr, _IOFBF, 1 << 22);
    cuptiActivityRegisterCallbacks(buf_requested, buf_completed);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMCPY);
    cuptiActivityEnable(CUPTI_ACTIVITY_KIND_MEMSET);
    if (!getenv("CUPTI_TRACE_NO_API")) cuptiActivityEnable(CUPTI_ACTIVITY_KIND_RUNTIME);
    cuptiActivityFlushPeriod(200);
    atexit(at_exit);
    return 1;
}
