// CUDA grouped_mm with either weight layout and a per-expert bias (docs/design.md, "Grouped GEMMs"),
// composed from the segment GEMMs of segment_gemm.cu and three small kernels of this file:
//
//   forward   y[seg e] = x[seg e] @ W_e               segment GEMM, B = w[e] or w[e]^T read in place
//             y[row] += bias[e(row)]                   add_bias_kernel (fp32 add, one rounding)
//             y[c[E]:] = 0                             zero_rows_kernel (rows of dropped slots)
//   backward  dx[seg e] = dy[seg e] @ W_e^T            segment GEMM, then zero past c[E]
//             dW_e = x[seg]^T @ dy[seg]  ([K, M])      weight-grad reduction; for w [E, M, K] its
//                                                      transpose dy[seg]^T @ x[seg] is reduced
//             dbias[e, c] = sum_{row in seg e} dy[row, c]   bias_grad_kernel: one thread per
//                                                      (expert, column), rows in order, fp32
// c[] are the clamped offsets of the segment map (segment_gemm.h). Every output element has one
// writer and every sum a fixed order: no atomics, bitwise reproducible. Nothing is read back to
// the host. T is float, __half or __nv_bfloat16.
#include <algorithm>

#include "adapter/kernels.h"
#include "core/cuda_utils.cuh"

namespace pesc {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 4096;

// The expert owning `row` (< c[E]): the largest e with c[e] <= row (empty experts own nothing).
__device__ __forceinline__ int expert_of_row(const SegmentMap& map, int64_t row) {
  int lo = 0, hi = map.E - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (map.offsets[mid] <= row)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// One block per row (grid-stride over rows), threads over the columns.
template <typename T>
__global__ void add_bias_kernel(T* __restrict__ y, const T* __restrict__ bias, int64_t M, SegmentMap map) {
  const int64_t kept = map.offsets[map.E];
  for (int64_t row = blockIdx.x; row < kept; row += gridDim.x) {
    const int64_t e = expert_of_row(map, row);
    for (int64_t c = threadIdx.x; c < M; c += blockDim.x)
      y[row * M + c] = from_float<T>(to_float(y[row * M + c]) + to_float(bias[e * M + c]));
  }
}

// One thread per (expert, column): the column sum over the expert's rows, in row order.
template <typename T>
__global__ void bias_grad_kernel(const T* __restrict__ grad_y, T* __restrict__ grad_bias, int64_t M, SegmentMap map,
                                 int64_t col_blocks) {
  const int64_t e = blockIdx.x / col_blocks;
  const int64_t c = (blockIdx.x % col_blocks) * kBlock + threadIdx.x;
  if (c >= M) return;
  float acc = 0.f;
  for (int64_t row = map.offsets[e]; row < map.offsets[e + 1]; ++row) acc += to_float(grad_y[row * M + c]);
  grad_bias[e * M + c] = from_float<T>(acc);
}

template <typename T>
__global__ void zero_rows_kernel(T* __restrict__ out, int64_t cols, SegmentMap map) {
  const int64_t end = map.N * cols;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = map.offsets[map.E] * cols + static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < end;
       i += stride)
    out[i] = from_float<T>(0.f);
}

unsigned grid_for(int64_t work) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, kBlock), kMaxBlocks)));
}

SegmentGemm plain_gemm(const void* a, const void* b, void* c, int64_t K, int64_t M, bool b_transposed) {
  return {a, b, c, nullptr, nullptr, K, M, b_transposed, GemmEpilogue::Store, Activation::Identity, 1.f};
}

}  // namespace

cudaError_t launch_zero_dropped_rows(void* out, int64_t cols, const SegmentLaunch& launch) {
  if (launch.map.N == 0 || cols == 0) return cudaSuccess;
  return PESC_DTYPE_SWITCH(launch.dtype, DeviceTypes, [&] {
    zero_rows_kernel<scalar_t>
        <<<grid_for(launch.map.N * cols), kBlock, 0, launch.stream>>>(static_cast<scalar_t*>(out), cols, launch.map);
    return cudaGetLastError();
  });
}

cudaError_t launch_grouped_linear(const void* x, const void* w, const void* bias, void* y, int64_t K, int64_t M,
                                  bool w_transposed, const SegmentLaunch& launch) {
  if (launch.map.N == 0 || M == 0) return cudaSuccess;
  PESC_CUDA_RETURN_IF_ERROR(launch_segment_gemm(plain_gemm(x, w, y, K, M, w_transposed), launch));
  if (bias != nullptr) {
    PESC_CUDA_RETURN_IF_ERROR(PESC_DTYPE_SWITCH(launch.dtype, DeviceTypes, [&] {
      const unsigned blocks = static_cast<unsigned>(std::min<int64_t>(launch.map.N, 65536));
      add_bias_kernel<scalar_t><<<blocks, kBlock, 0, launch.stream>>>(
          static_cast<scalar_t*>(y), static_cast<const scalar_t*>(bias), M, launch.map);
      return cudaGetLastError();
    }));
  }
  return launch_zero_dropped_rows(y, M, launch);
}

cudaError_t launch_grouped_linear_backward(const void* grad_y, const void* x, const void* w, void* grad_x, void* grad_w,
                                           void* grad_bias, int64_t K, int64_t M, bool w_transposed,
                                           const SegmentLaunch& launch) {
  if (grad_x != nullptr) {
    // dx [N, K] = dy [N, M] @ W_e^T: W_e^T is w[e]^T for w [E, K, M], and w[e] itself for w [E, M, K].
    PESC_CUDA_RETURN_IF_ERROR(launch_segment_gemm(plain_gemm(grad_y, w, grad_x, M, K, !w_transposed), launch));
    PESC_CUDA_RETURN_IF_ERROR(launch_zero_dropped_rows(grad_x, K, launch));
  }
  if (grad_w != nullptr) {
    const SegmentWeightGrad g = w_transposed
                                    ? SegmentWeightGrad{grad_y, x, grad_w, M, K, false, Activation::Identity, 1.f}
                                    : SegmentWeightGrad{x, grad_y, grad_w, K, M, false, Activation::Identity, 1.f};
    PESC_CUDA_RETURN_IF_ERROR(launch_segment_weight_grad(g, launch));
  }
  if (grad_bias != nullptr && M > 0) {
    PESC_CUDA_RETURN_IF_ERROR(PESC_DTYPE_SWITCH(launch.dtype, DeviceTypes, [&] {
      const int64_t col_blocks = ceil_div(M, kBlock);
      bias_grad_kernel<scalar_t><<<static_cast<unsigned>(launch.map.E * col_blocks), kBlock, 0, launch.stream>>>(
          static_cast<const scalar_t*>(grad_y), static_cast<scalar_t*>(grad_bias), M, launch.map, col_blocks);
      return cudaGetLastError();
    }));
  }
  return cudaSuccess;
}

}  // namespace pesc
