// CUDA gated activation of a gate/up GEMM output and its backward (docs/design.md, "Grouped GEMMs"):
//   forward   a[n, f] = gated(h[n, gate col], h[n, up col])           h [N, 2F] -> a [N, F]
//   backward  (grad_h[n, gate col], grad_h[n, up col]) = gated'(...) * grad_a[n, f]
// with the math of adapter/gated.h (the CPU kernels run the same functions), in fp32 with one
// rounding per output. One thread per output column f of a row, grid-stride: each output element
// has one writer. The kind (activation or clamped SwiGLU), the layout (concatenated or
// interleaved) and the dtype are compile-time constants of each instantiation.
#include <algorithm>

#include "adapter/kernels.h"
#include "core/cuda_utils.cuh"

namespace pesc {
namespace {

constexpr int kBlock = 256;
constexpr int64_t kMaxBlocks = 8192;

template <typename T, int KIND, bool INTERLEAVED>
__global__ void gated_forward_kernel(const T* __restrict__ h, T* __restrict__ a, int64_t N, int64_t F, GatedKind kind) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N * F; i += stride) {
    const int64_t n = i / F, f = i % F;
    const T* row = h + n * 2 * F;
    const float g = to_float(row[gate_column(f, F, INTERLEAVED)]);
    const float u = to_float(row[up_column(f, F, INTERLEAVED)]);
    a[i] = from_float<T>(gated_value<KIND>(g, u, kind));
  }
}

template <typename T, int KIND, bool INTERLEAVED>
__global__ void gated_backward_kernel(const T* __restrict__ grad_a, const T* __restrict__ h, T* __restrict__ grad_h,
                                      int64_t N, int64_t F, GatedKind kind) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < N * F; i += stride) {
    const int64_t n = i / F, f = i % F;
    const int64_t gc = n * 2 * F + gate_column(f, F, INTERLEAVED), uc = n * 2 * F + up_column(f, F, INTERLEAVED);
    const GatedGrad d = gated_grad<KIND>(to_float(h[gc]), to_float(h[uc]), to_float(grad_a[i]), kind);
    grad_h[gc] = from_float<T>(d.dg);
    grad_h[uc] = from_float<T>(d.du);
  }
}

unsigned grid_for(int64_t work) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, kBlock), kMaxBlocks)));
}

// Calls launch(scalar_t tag, KIND constant, INTERLEAVED constant) for the runtime choices.
template <typename Launch>
cudaError_t dispatch_gated(DType dtype, bool interleaved, const GatedKind& kind, const Launch& launch) {
  return PESC_DTYPE_SWITCH(dtype, DeviceTypes, [&] {
    return PESC_BOOL_SWITCH(interleaved, INTERLEAVED, [&] {
      return with_gated_kind(kind, [&](auto k) {
        launch(static_cast<scalar_t*>(nullptr), k, std::integral_constant<bool, INTERLEAVED>{});
        return cudaGetLastError();
      });
    });
  });
}

}  // namespace

cudaError_t launch_gated_activation(const void* h, void* a, int64_t N, int64_t F, bool interleaved,
                                    const GatedKind& kind, DType dtype, cudaStream_t stream) {
  if (N * F == 0) return cudaSuccess;
  return dispatch_gated(dtype, interleaved, kind, [&](auto* tag, auto k, auto il) {
    using T = std::remove_pointer_t<decltype(tag)>;
    gated_forward_kernel<T, decltype(k)::value, decltype(il)::value>
        <<<grid_for(N * F), kBlock, 0, stream>>>(static_cast<const T*>(h), static_cast<T*>(a), N, F, kind);
  });
}

cudaError_t launch_gated_activation_backward(const void* grad_a, const void* h, void* grad_h, int64_t N, int64_t F,
                                             bool interleaved, const GatedKind& kind, DType dtype,
                                             cudaStream_t stream) {
  if (N * F == 0) return cudaSuccess;
  return dispatch_gated(dtype, interleaved, kind, [&](auto* tag, auto k, auto il) {
    using T = std::remove_pointer_t<decltype(tag)>;
    gated_backward_kernel<T, decltype(k)::value, decltype(il)::value><<<grid_for(N * F), kBlock, 0, stream>>>(
        static_cast<const T*>(grad_a), static_cast<const T*>(h), static_cast<T*>(grad_h), N, F, kind);
  });
}

}  // namespace pesc
