// Launchers of the grouped_mm, adapter and gated_activation ops on CUDA. Torch-free: raw pointers,
// sizes, and the SegmentLaunch built from the device-side offsets (segment_gemm.h).
//   kernels.cu         launch_grouped_mm(_backward), launch_adapter(_backward)
//   grouped_linear.cu  launch_grouped_linear(_backward) (w in either layout, optional bias),
//                      launch_zero_dropped_rows
//   gated.cu           launch_gated_activation(_backward)
// Layouts (row-major, the op's dtype): x [N, K] or [N, d], w [E, K, M] (or [E, M, K] when
// w_transposed), bias [E, M], w_down [E, d, r], w_up [E, r, d], y [N, M] or [N, d], h and the
// [N, r] workspaces; gated_activation's h [N, 2F] and a [N, F]. Rows from the clamped offsets[E]
// to N (slots permute dropped) belong to no expert.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "adapter/activations.h"
#include "adapter/gated.h"
#include "adapter/segment_gemm.h"
#include "core/dtype.h"

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

// ---- grouped_linear.cu ----

// y[seg e] = x[seg e] @ W_e (+ bias[e] when bias != nullptr), W_e = w[e] or, with w_transposed,
// w[e]^T (w [E, M, K] read in place); rows past the clamped offsets[E] are set to zero.
cudaError_t launch_grouped_linear(const void* x, const void* w, const void* bias, void* y, int64_t K, int64_t M,
                                  bool w_transposed, const SegmentLaunch& launch);

// grad_x [N, K] (zero past offsets[E]), grad_w (w's layout) and grad_bias [E, M] (per-expert
// column sums of grad_y in fp32, rows in order); each is skipped when its pointer is nullptr.
cudaError_t launch_grouped_linear_backward(const void* grad_y, const void* x, const void* w, void* grad_x, void* grad_w,
                                           void* grad_bias, int64_t K, int64_t M, bool w_transposed,
                                           const SegmentLaunch& launch);

// Sets rows offsets[E] .. N of out [N, cols] (launch.dtype) to zero: the rows of dropped slots.
cudaError_t launch_zero_dropped_rows(void* out, int64_t cols, const SegmentLaunch& launch);

// ---- gated.cu ----

// a[n, f] = gated(h[n, gate column], h[n, up column]) (adapter/gated.h); h [N, 2F], a [N, F].
cudaError_t launch_gated_activation(const void* h, void* a, int64_t N, int64_t F, bool interleaved,
                                    const GatedKind& kind, DType dtype, cudaStream_t stream);

// grad_h [N, 2F] from grad_a [N, F] and h.
cudaError_t launch_gated_activation_backward(const void* grad_a, const void* h, void* grad_h, int64_t N, int64_t F,
                                             bool interleaved, const GatedKind& kind, DType dtype, cudaStream_t stream);

}  // namespace pesc
