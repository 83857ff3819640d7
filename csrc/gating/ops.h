// The routing ops' contract, shared by every backend (docs/design.md, "Routing"):
//
//   topk_gating(logits[T,E], k, normalize) -> weights[T,k] fp32, indices[T,k] int32
//   topk_gating_backward(grad_weights[T,k], logits, weights, indices, normalize) -> grad_logits[T,E]
//   load_balancing_loss(logits, indices[T,k], mask[T] bool?) -> 0-dim fp32   (E * sum_e f_e * P_e)
//   load_balancing_loss_backward(grad 0-dim fp32, logits, indices, mask?) -> grad_logits[T,E]
//   router_z_loss(logits, mask?) -> 0-dim fp32                               (mean_t lse_t^2)
//   router_z_loss_backward(grad, logits, mask?) -> grad_logits[T,E]
//   topk_gating_with_balancing_loss(logits, k, normalize, mask?)
//       -> weights[T,k] fp32, indices[T,k] int32, loss 0-dim fp32 (load_balancing_loss of indices),
//          routed_counts[E+1] int32 (routed slots per expert over counted tokens, then the counted tokens)
//   topk_gating_with_balancing_loss_backward(grad_weights[T,k], grad_loss 0-dim fp32, logits, weights, indices,
//       routed_counts, mask?, normalize) -> grad_logits[T,E]   (the two ops' gradients, added)
// logits fp32/fp16/bf16 (grad_logits in its dtype), 1 <= E <= 1024, 1 <= k <= E, T*k < 2^31.
//
// Each <op>_outputs validates every argument and allocates the op's (contiguous) outputs. It is the
// op's Meta kernel (registered in ops.cpp) and the first step of its CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace pesc {

std::tuple<at::Tensor, at::Tensor> topk_gating_outputs(const at::Tensor& logits, int64_t k, bool normalize);
at::Tensor topk_gating_backward_outputs(const at::Tensor& grad_weights, const at::Tensor& logits,
                                        const at::Tensor& weights, const at::Tensor& indices, bool normalize);
at::Tensor load_balancing_loss_outputs(const at::Tensor& logits, const at::Tensor& indices,
                                       const std::optional<at::Tensor>& mask);
at::Tensor load_balancing_loss_backward_outputs(const at::Tensor& grad, const at::Tensor& logits,
                                                const at::Tensor& indices, const std::optional<at::Tensor>& mask);
at::Tensor router_z_loss_outputs(const at::Tensor& logits, const std::optional<at::Tensor>& mask);
at::Tensor router_z_loss_backward_outputs(const at::Tensor& grad, const at::Tensor& logits,
                                          const std::optional<at::Tensor>& mask);

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_gating_with_balancing_loss_outputs(
    const at::Tensor& logits, int64_t k, bool normalize, const std::optional<at::Tensor>& mask);
at::Tensor topk_gating_with_balancing_loss_backward_outputs(const at::Tensor& grad_weights, const at::Tensor& grad_loss,
                                                            const at::Tensor& logits, const at::Tensor& weights,
                                                            const at::Tensor& indices, const at::Tensor& routed_counts,
                                                            const std::optional<at::Tensor>& mask, bool normalize);

}  // namespace pesc
