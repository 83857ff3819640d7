// CUDA entry points of the permutation ops: validate and allocate the outputs (permute/ops.h), make
// inputs contiguous, allocate workspaces through the caching allocator, and launch the kernels of
// permute/kernels.h on the current stream under a device guard. Every size follows from the input
// shapes (N = T*k) and nothing reads device memory, so there is no host sync. Unlike the CPU path,
// ids and row_map entries are not validated against their ranges (that would need a sync); the
// kernels keep every access in bounds instead (see kernels.h).
//
// int64 ids and drop_invalid go through a bucket array (slots.cu): int32 buckets in [0, E), plus E
// for dropped slots, which launch_permute sorts as an extra expert E; its E + 2 offsets are cut to
// E + 1 and the dropped slots' rows and row_map entries are then marked. Weights of any float
// dtype are read as a float32 copy ([T, k], small).
#include <ATen/ATen.h>

#include <torch/library.h>

#include "core/cuda_host.h"
#include "permute/kernels.h"
#include "permute/ops.h"

namespace pesc {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor> permute_cuda(const at::Tensor& x_in, const at::Tensor& indices_in,
                                                            int64_t num_experts, bool drop_invalid) {
  auto [x_perm, row_map, offsets] = permute_outputs(x_in, indices_in, num_experts, drop_invalid);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), indices = indices_in.contiguous();
  const int64_t T = x.size(0), d = x.size(1), k = indices.size(1), N = T * k;
  const int E = static_cast<int>(num_experts);
  const auto int32 = x.options().dtype(at::kInt);
  // int32 ids without dropping are sorted as they are; anything else through int32 buckets.
  at::Tensor buckets = indices;
  if (indices.scalar_type() != at::kInt || drop_invalid) {
    buckets = at::empty({T, k}, int32);
    C10_CUDA_CHECK(launch_slot_buckets(indices.data_ptr(), indices.scalar_type() == at::kLong, N, E, drop_invalid,
                                       buckets.data_ptr<int32_t>(), current_stream()));
  }
  const int sort_experts = drop_invalid ? E + 1 : E;  // dropped slots: one more bucket, after the experts
  at::Tensor sort_offsets = drop_invalid ? at::empty({E + 2}, offsets.options()) : offsets;
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(permute_sort_temp_bytes(N, sort_experts, &temp_bytes));
  // keys and slots hold the sort's input then output halves; keys are uint32 bit patterns.
  at::Tensor keys = at::empty({2 * N}, int32);
  at::Tensor slots = at::empty({2 * N}, int32);
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, x.options().dtype(at::kByte));
  C10_CUDA_CHECK(launch_permute(x.data_ptr(), dtype_of(x), buckets.data_ptr<int32_t>(), T, d, static_cast<int>(k),
                                sort_experts, reinterpret_cast<uint32_t*>(keys.data_ptr<int32_t>()),
                                slots.data_ptr<int32_t>(), temp.data_ptr(), temp_bytes, x_perm.data_ptr(),
                                row_map.data_ptr<int32_t>(), sort_offsets.data_ptr<int64_t>(), current_stream()));
  if (drop_invalid) {
    C10_CUDA_CHECK(launch_mark_dropped_slots(buckets.data_ptr<int32_t>(), N, E, row_map.data_ptr<int32_t>(),
                                             x_perm.data_ptr(), d, dtype_of(x), current_stream()));
    offsets.copy_(sort_offsets.narrow(0, 0, E + 1));  // device to device on the current stream
  }
  return {x_perm, row_map, offsets};
}

at::Tensor unpermute_cuda(const at::Tensor& y_perm_in, const at::Tensor& row_map_in,
                          const std::optional<at::Tensor>& weights_in, const std::optional<at::Tensor>& residual_in) {
  at::Tensor y = unpermute_outputs(y_perm_in, row_map_in, weights_in, residual_in);
  const c10::cuda::CUDAGuard guard(y_perm_in.device());
  const at::Tensor y_perm = y_perm_in.contiguous(), row_map = row_map_in.contiguous();
  const auto weights = weights_fp32(weights_in), residual = contiguous_optional(residual_in);
  C10_CUDA_CHECK(launch_unpermute(y_perm.data_ptr(), dtype_of(y_perm), row_map.data_ptr<int32_t>(),
                                  optional_data<float>(weights), optional_data_ptr(residual), row_map.size(0),
                                  static_cast<int>(row_map.size(1)), y_perm.size(1), y.data_ptr(), current_stream()));
  return y;
}

std::tuple<at::Tensor, at::Tensor> unpermute_backward_cuda(const at::Tensor& grad_y_in, const at::Tensor& row_map_in,
                                                           const std::optional<at::Tensor>& weights_in,
                                                           const std::optional<at::Tensor>& y_perm_in) {
  auto [grad_y_perm, grad_weights] = unpermute_backward_outputs(grad_y_in, row_map_in, weights_in, y_perm_in);
  const c10::cuda::CUDAGuard guard(grad_y_in.device());
  const at::Tensor grad_y = grad_y_in.contiguous(), row_map = row_map_in.contiguous();
  const auto weights = weights_fp32(weights_in), y_perm = contiguous_optional(y_perm_in);
  const int64_t T = row_map.size(0), k = row_map.size(1), d = grad_y.size(1);
  // The dot products accumulate in fp32; they are rounded once to the weights' dtype.
  at::Tensor grad_weights_fp32 = y_perm.has_value() && grad_weights.scalar_type() != at::kFloat
                                     ? at::empty_like(grad_weights, at::kFloat)
                                     : grad_weights;
  C10_CUDA_CHECK(launch_unpermute_backward(
      grad_y.data_ptr(), dtype_of(grad_y), row_map.data_ptr<int32_t>(), optional_data<float>(weights),
      optional_data_ptr(y_perm), T, static_cast<int>(k), d, grad_y_perm.data_ptr(),
      y_perm.has_value() ? grad_weights_fp32.data_ptr<float>() : nullptr, current_stream()));
  C10_CUDA_CHECK(launch_zero_dropped_slot_rows(row_map.data_ptr<int32_t>(), T * k, d, dtype_of(grad_y),
                                               grad_y_perm.data_ptr(), current_stream()));
  if (!grad_weights_fp32.is_same(grad_weights)) grad_weights.copy_(grad_weights_fp32);
  return {grad_y_perm, grad_weights};
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CUDA, m) {
  m.impl("permute", &pesc::permute_cuda);
  m.impl("unpermute", &pesc::unpermute_cuda);
  m.impl("unpermute_backward", &pesc::unpermute_backward_cuda);
}
