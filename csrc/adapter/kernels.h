// Launchers of the grouped_mm and adapter ops on CUDA (adapter/kernels.cu). Torch-free: raw pointers,
// sizes, and the SegmentLaunch built from the device-side offsets (segment_gemm.h).
// Layouts (row-major, the op's dtype): x [N, K] or [N, d], w [E, K, M], w_down [E, d, r],
// w_up [E, r, d], y [N, M] or [N, d], h and the [N, r] workspaces.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "adapter/activations.h"
#include "adapter/segment_gemm.h"

namespace pesc {

// Largest rank the fused adapter forward keeps on chip; larger ranks run two segment GEMMs.
constexpr int64_t kMaxFusedRank = 128;
inline bool adapter_forward_is_fused(int64_t r) { return r <= kMaxFusedRank; }

cudaError_t launch_grouped_mm(const void* x, const void* w, void* y, int64_t K, int64_t M, const SegmentLaunch& launch);

// grad_x [N, K] and grad_w [E, K, M] are each skipped when nullptr.
cudaError_t launch_grouped_mm_backward(const void* grad_y, const void* x, const void* w, void* grad_x, void* grad_w,
                                       int64_t K, int64_t M, const SegmentLaunch& launch);

// Writes y and h = x @ w_down. `activation_buffer` ([N, r]) is used only when the forward is not
// fused (r > kMaxFusedRank) and may be nullptr otherwise.
cudaError_t launch_adapter(const void* x, const void* w_down, const void* w_up, void* y, void* h,
                           void* activation_buffer, int64_t d, int64_t r, Activation act, float scaling,
                           const SegmentLaunch& launch);

// dh_buffer ([N, r]) is needed when grad_x or grad_w_down is requested; each gradient is skipped
// when its pointer is nullptr.
cudaError_t launch_adapter_backward(const void* grad_y, const void* x, const void* w_down, const void* w_up,
                                    const void* h, void* dh_buffer, void* grad_x, void* grad_w_down, void* grad_w_up,
                                    int64_t d, int64_t r, Activation act, float scaling, const SegmentLaunch& launch);

}  // namespace pesc
