// Launchers of the grouped top-k routing kernels (kernels.cu). Torch-free: raw pointers, sizes, a
// dtype tag and a stream. Layouts: logits [T, E] row-major in `dtype` (math in fp32); bias [E] fp32
// or nullptr; weights and grad_weights [T, k] fp32; indices [T, k] int32; grad_logits [T, E] in
// `dtype`. Nothing is read back to the host.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"
#include "routing/math.h"

namespace pesc {

cudaError_t launch_grouped_topk_gating(const void* logits, DType dtype, const float* bias, int64_t T,
                                       const GroupedTopkParams& params, float* weights, int32_t* indices,
                                       cudaStream_t stream);

// Ids outside [0, E) in `indices` contribute nothing (CUDA cannot raise on them without a sync).
cudaError_t launch_grouped_topk_gating_backward(const float* grad_weights, const void* logits, DType dtype,
                                                const int32_t* indices, int64_t T, const GroupedTopkParams& params,
                                                void* grad_logits, cudaStream_t stream);

}  // namespace pesc
