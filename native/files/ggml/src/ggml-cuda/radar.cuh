// Radar sparse decode attention on CUDA: the interface ggml-cuda.cu calls (see ggml_radar_summarize and
// ggml_radar_attn in ggml.h; the kernels are in radar-*.cu)
#include "common.cuh"

void ggml_cuda_op_radar_summarize(ggml_backend_cuda_context & ctx, ggml_tensor * dst);
void ggml_cuda_op_radar_attn(ggml_backend_cuda_context & ctx, ggml_tensor * dst);

// GGML_OP_RADAR_SUMMARIZE and GGML_OP_RADAR_ATTN: K/V types F32, F16, Q8_0 and head sizes 64, 128, 256
bool ggml_cuda_radar_supported(const ggml_tensor * op);
