// The grouped-GEMM ops' contract, shared by every backend (docs/design.md, "Grouped GEMMs"):
//
//   grouped_mm(x[N,K], w[E,K,M], expert_offsets[E+1] int64) -> y[N,M]       y[seg e] = x[seg e] @ w[e]
//   grouped_mm_backward(grad_y[N,M], x, w, expert_offsets, output_mask[2]) -> grad_x[N,K], grad_w[E,K,M]
//   adapter(x[N,d], w_down[E,d,r], w_up[E,r,d], expert_offsets, activation, scaling) -> y[N,d], h[N,r]
//       y[seg e] = scaling * act(x[seg e] @ w_down[e]) @ w_up[e]; h = x @ w_down (the saved pre-activation)
//   adapter_backward(grad_y, x, w_down, w_up, expert_offsets, h, activation, scaling, output_mask[3])
//       -> grad_x, grad_w_down, grad_w_up
// Every weight, grad_y and h in x's dtype (fp32/fp16/bf16); E >= 1, r >= 1. Expert e owns rows
// expert_offsets[e] .. expert_offsets[e+1]: offsets[0] = 0, non-decreasing, offsets[E] = N (values
// checked on CPU only: reading device memory would sync). A backward output whose output_mask entry
// is false is an empty [0] placeholder.
//
// Each <op>_outputs validates every argument and allocates the op's (contiguous) outputs. It is the
// op's Meta kernel (registered in ops.cpp) and the first step of its CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <string_view>
#include <tuple>

#include "adapter/activations.h"

namespace pesc {

at::Tensor grouped_mm_outputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& expert_offsets);
std::tuple<at::Tensor, at::Tensor> grouped_mm_backward_outputs(const at::Tensor& grad_y, const at::Tensor& x,
                                                               const at::Tensor& w, const at::Tensor& expert_offsets,
                                                               std::array<bool, 2> output_mask);
std::tuple<at::Tensor, at::Tensor> adapter_outputs(const at::Tensor& x, const at::Tensor& w_down,
                                                   const at::Tensor& w_up, const at::Tensor& expert_offsets,
                                                   std::string_view activation, double scaling);
std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_backward_outputs(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w_down, const at::Tensor& w_up,
    const at::Tensor& expert_offsets, const at::Tensor& h, std::string_view activation, double scaling,
    std::array<bool, 3> output_mask);

// The Activation an op's `activation` string names (ValueError listing the valid names otherwise).
Activation parse_activation(const char* op, std::string_view name);

}  // namespace pesc
