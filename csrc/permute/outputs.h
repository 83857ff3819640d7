// Output allocation of the permutation ops, shared by the CPU and CUDA entry points so both return
// the same shapes and dtypes (the fake implementations in pesc_kernels/_permute_ops.py mirror them):
//   permute:            x_perm [T*k, d] (dtype of x), row_map [T, k] int32, expert_offsets [E+1] int64
//   unpermute:          y [T, d] (dtype of y_perm)
//   unpermute_backward: grad_y_perm [T*k, d] (dtype of grad_y), grad_weights [T, k] fp32 when y_perm
//                       is given, else an empty [0] fp32 placeholder
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace pesc {

inline std::optional<at::Tensor> contiguous_optional(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

inline std::tuple<at::Tensor, at::Tensor, at::Tensor> allocate_permute_outputs(const at::Tensor& x,
                                                                               const at::Tensor& indices,
                                                                               int64_t num_experts) {
  return {at::empty({indices.numel(), x.size(1)}, x.options()), at::empty(indices.sizes(), indices.options()),
          at::empty({num_experts + 1}, x.options().dtype(at::kLong))};
}

inline at::Tensor allocate_unpermute_output(const at::Tensor& y_perm, const at::Tensor& row_map) {
  return at::empty({row_map.size(0), y_perm.size(1)}, y_perm.options());
}

inline std::tuple<at::Tensor, at::Tensor> allocate_unpermute_backward_outputs(const at::Tensor& grad_y,
                                                                              const at::Tensor& row_map,
                                                                              bool with_grad_weights) {
  const auto fp32 = grad_y.options().dtype(at::kFloat);
  return {at::empty({row_map.numel(), grad_y.size(1)}, grad_y.options()),
          with_grad_weights ? at::empty(row_map.sizes(), fp32) : at::empty({0}, fp32)};
}

}  // namespace pesc
