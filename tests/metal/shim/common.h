// Stand-in for ggml-metal's kernels/common.h when a kernel source is compiled by msl_emu.h on the CPU:
// the kernel arguments (ggml-metal-radar.h, as ggml-metal-impl.h includes it) and the few definitions of
// common.h and ggml-common.h that the Radar kernels use.
#pragma once

#include "msl_emu.h"

#include "ggml-metal-radar.h"

#define MAX(x, y) ((x) > (y) ? (x) : (y))
#define MIN(x, y) ((x) < (y) ? (x) : (y))

#define N_SIMDWIDTH 32

#define QK8_0 32
typedef struct {
    half   d;
    int8_t qs[QK8_0];
} block_q8_0;
static_assert(sizeof(block_q8_0) == 34, "wrong q8_0 block size/padding");
