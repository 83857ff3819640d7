// Launchers for the permutation kernels in permute/kernels.cu. Torch-free: raw pointers, sizes and a stream.
// Layouts (N = T*k; row tensors in the dtype given by `dtype`, row-major and contiguous):
//   x, residual, y, grad_y [T, d]; x_perm, y_perm, grad_y_perm [N, d]; indices, row_map [T, k] int32;
//   weights, grad_weights [T, k] fp32; expert_offsets [E + 1] int64.
// Optional pointers (weights, residual, y_perm) are nullptr when absent. Nothing is read back to
// the host, so every launcher is asynchronous on `stream`.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "core/dtype.h"

namespace pesc {

// Bytes of CUB radix-sort scratch launch_permute needs for N routed slots and E experts. Host-only
// arithmetic: it launches nothing and does not synchronise.
cudaError_t permute_sort_temp_bytes(int64_t N, int E, size_t* bytes);

// keys: 2*N uint32 and slots: 2*N int32 workspaces (sort input then output); sort_temp: the bytes
// permute_sort_temp_bytes gives. Ids outside [0, E) are clamped to [0, E-1] (permute/math.h).
cudaError_t launch_permute(const void* x, DType dtype, const int32_t* indices, int64_t T, int64_t d, int k, int E,
                           uint32_t* keys, int32_t* slots, void* sort_temp, size_t sort_temp_bytes, void* x_perm,
                           int32_t* row_map, int64_t* expert_offsets, cudaStream_t stream);

// y[t] = residual[t] + sum_j weights[t,j] * y_perm[row_map[t,j]] (fp32 accumulation). row_map
// entries outside [0, N) contribute nothing.
cudaError_t launch_unpermute(const void* y_perm, DType dtype, const int32_t* row_map, const float* weights,
                             const void* residual, int64_t T, int k, int64_t d, void* y, cudaStream_t stream);

// grad_y_perm[row_map[t,j]] = weights[t,j] * grad_y[t]; with y_perm, also
// grad_weights[t,j] = <grad_y[t], y_perm[row_map[t,j]]> in fp32 (grad_weights is then non-null).
// row_map entries outside [0, N) are skipped (their grad_weights are 0).
cudaError_t launch_unpermute_backward(const void* grad_y, DType dtype, const int32_t* row_map, const float* weights,
                                      const void* y_perm, int64_t T, int k, int64_t d, void* grad_y_perm,
                                      float* grad_weights, cudaStream_t stream);

}  // namespace pesc
