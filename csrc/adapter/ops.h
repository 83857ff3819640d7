// The grouped-GEMM ops' contract, shared by every backend (docs/design.md, "Grouped GEMMs"):
//
//   grouped_mm(x[N,K], w, expert_offsets[E+1] int64, bias[E,M]?, w_transposed) -> y[N,M]
//       y[seg e] = x[seg e] @ W_e + bias[e], W_e = w[e] with w [E,K,M], or w[e]^T with w [E,M,K] (w_transposed)
//   grouped_mm_backward(grad_y[N,M], x, w, expert_offsets, w_transposed, output_mask[3])
//       -> grad_x[N,K], grad_w (w's shape), grad_bias[E,M]
//   adapter(x[N,d], w_down[E,d,r], w_up[E,r,d], expert_offsets, activation, scaling) -> y[N,d], h[N,r]
//       y[seg e] = scaling * act(x[seg e] @ w_down[e]) @ w_up[e]; h = x @ w_down (the saved pre-activation)
//   adapter_backward(grad_y, x, w_down, w_up, expert_offsets, h, activation, scaling, output_mask[3])
//       -> grad_x, grad_w_down, grad_w_up
//   gated_activation(h[N,2F], activation, interleaved, limit, alpha) -> a[N,F]        (adapter/gated.h)
//   gated_activation_backward(grad_a[N,F], h, activation, interleaved, limit, alpha) -> grad_h[N,2F]
// Every weight, bias, grad_y and h in x's dtype (fp32/fp16/bf16); E >= 1, r >= 1. Expert e owns rows
// expert_offsets[e] .. expert_offsets[e+1]: offsets[0] = 0, non-decreasing, offsets[E] <= N (values
// checked on CPU only: reading device memory would sync). Rows offsets[E] .. N belong to no expert
// (slots permute dropped): they are zero in every [N, *] output and add nothing to weight gradients.
// A backward output whose output_mask entry is false is an empty [0] placeholder.
//
// Each <op>_outputs validates every argument and allocates the op's (contiguous) outputs. It is the
// op's Meta kernel (registered in ops.cpp) and the first step of its CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

#include "adapter/activations.h"
#include "adapter/gated.h"

namespace pesc {

at::Tensor grouped_mm_outputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& expert_offsets,
                              const std::optional<at::Tensor>& bias, bool w_transposed);
std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_mm_backward_outputs(const at::Tensor& grad_y,
                                                                           const at::Tensor& x, const at::Tensor& w,
                                                                           const at::Tensor& expert_offsets,
                                                                           bool w_transposed,
                                                                           std::array<bool, 3> output_mask);
std::tuple<at::Tensor, at::Tensor> adapter_outputs(const at::Tensor& x, const at::Tensor& w_down,
                                                   const at::Tensor& w_up, const at::Tensor& expert_offsets,
                                                   std::string_view activation, double scaling);
std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_backward_outputs(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w_down, const at::Tensor& w_up,
    const at::Tensor& expert_offsets, const at::Tensor& h, std::string_view activation, double scaling,
    std::array<bool, 3> output_mask);

at::Tensor gated_activation_outputs(const at::Tensor& h, std::string_view activation, bool interleaved, double limit,
                                    double alpha);
at::Tensor gated_activation_backward_outputs(const at::Tensor& grad_a, const at::Tensor& h, std::string_view activation,
                                             bool interleaved, double limit, double alpha);

// The Activation an op's `activation` string names (ValueError listing the valid names otherwise).
Activation parse_activation(const char* op, std::string_view name);
// The GatedKind of gated_activation's arguments: an adapter activation or "clamped_swiglu".
GatedKind parse_gated_kind(const char* op, std::string_view name, double limit, double alpha);

}  // namespace pesc
