// The permutation ops' contract, shared by every backend (docs/design.md, "Permutation"):
//
//   permute(x[T,d], indices[T,k] int32|int64, num_experts E, drop_invalid)
//       -> x_perm[N,d] (dtype of x), row_map[T,k] int32, expert_offsets[E+1] int64      N = T*k
//   unpermute(y_perm[N,d], row_map[T,k], weights[T,k]?, residual[T,d]?) -> y[T,d] (dtype of y_perm)
//   unpermute_backward(grad_y[T,d], row_map, weights?, y_perm?)
//       -> grad_y_perm[N,d] (dtype of grad_y), grad_weights[T,k] (dtype of weights, fp32 without
//          weights) when y_perm is given, else [0]
// Row tensors fp32/fp16/bf16 and all of one dtype; weights any of the three (read as fp32);
// 1 <= E <= 1024; k >= 1; N < 2^31 (row_map is int32).
// Dropped slots (drop_invalid and an id outside [0, E)): sorted after the last expert, so
// expert_offsets[E] counts the kept slots only; row_map[t, j] = ~n < 0 for a dropped slot, where
// n in [offsets[E], N) is the row it reserves (zero in x_perm and grad_y_perm); unpermute skips it.
//
// Each <op>_outputs validates every argument and allocates the op's (contiguous) outputs. It is the
// op's Meta kernel (registered in ops.cpp) and the first step of its CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pesc {

std::tuple<at::Tensor, at::Tensor, at::Tensor> permute_outputs(const at::Tensor& x, const at::Tensor& indices,
                                                               int64_t num_experts, bool drop_invalid);
at::Tensor unpermute_outputs(const at::Tensor& y_perm, const at::Tensor& row_map,
                             const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& residual);
std::tuple<at::Tensor, at::Tensor> unpermute_backward_outputs(const at::Tensor& grad_y, const at::Tensor& row_map,
                                                              const std::optional<at::Tensor>& weights,
                                                              const std::optional<at::Tensor>& y_perm);

// Reads the data (CPU tensors only): row_map [T, k] must be a permutation of [0, T*k) once each
// dropped entry ~n is read as n, as permute returns it; the error names the first out-of-range or
// repeated entry and its position.
void check_row_map_cpu(const char* op, const at::Tensor& row_map);

// The weights as a contiguous fp32 tensor (a copy for fp16/bf16 weights), or nullopt.
std::optional<at::Tensor> weights_fp32(const std::optional<at::Tensor>& weights);

}  // namespace pesc
