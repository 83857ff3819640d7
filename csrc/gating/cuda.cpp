// CUDA entry points of the routing ops: validate and allocate the outputs (gating/ops.h), make inputs
// contiguous, allocate workspaces through the caching allocator, and launch kernels.cu's kernels on the
// current stream under a device guard. Nothing here reads device memory, so there is no host sync.
// topk_gating_with_balancing_loss composes the launchers of topk_gating and load_balancing_loss.
#include <ATen/ATen.h>

#include <torch/library.h>

#include "core/cuda_host.h"
#include "gating/kernels.h"
#include "gating/ops.h"

namespace pesc {
namespace {

at::Tensor int_workspace(const at::Tensor& like, int64_t n) { return at::empty({n}, like.options().dtype(at::kInt)); }
at::Tensor float_workspace(const at::Tensor& like, int64_t n) {
  return at::empty({n}, like.options().dtype(at::kFloat));
}

std::tuple<at::Tensor, at::Tensor> topk_gating_cuda(const at::Tensor& logits_in, int64_t k, bool normalize) {
  auto [weights, indices] = topk_gating_outputs(logits_in, k, normalize);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1);
  C10_CUDA_CHECK(launch_topk_gating(logits.data_ptr(), dtype_of(logits), T, static_cast<int>(E), static_cast<int>(k),
                                    normalize, weights.data_ptr<float>(), indices.data_ptr<int32_t>(),
                                    current_stream()));
  return {weights, indices};
}

at::Tensor topk_gating_backward_cuda(const at::Tensor& grad_weights_in, const at::Tensor& logits_in,
                                     const at::Tensor& weights_in, const at::Tensor& indices_in, bool normalize) {
  at::Tensor grad_logits = topk_gating_backward_outputs(grad_weights_in, logits_in, weights_in, indices_in, normalize);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), grad_weights = grad_weights_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), indices = indices_in.contiguous();
  C10_CUDA_CHECK(launch_topk_gating_backward(grad_weights.data_ptr<float>(), logits.data_ptr(), dtype_of(logits),
                                             weights.data_ptr<float>(), indices.data_ptr<int32_t>(), logits.size(0),
                                             static_cast<int>(logits.size(1)), static_cast<int>(indices.size(1)),
                                             normalize, grad_logits.data_ptr(), current_stream()));
  return grad_logits;
}

at::Tensor load_balancing_loss_cuda(const at::Tensor& logits_in, const at::Tensor& indices_in,
                                    const std::optional<at::Tensor>& mask_in) {
  at::Tensor loss = load_balancing_loss_outputs(logits_in, indices_in, mask_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), indices = indices_in.contiguous();
  const auto mask = contiguous_optional(mask_in);
  const int64_t T = logits.size(0), E = logits.size(1);
  at::Tensor counts = int_workspace(logits, E + 1);
  at::Tensor partials = float_workspace(logits, loss_chunks(T) * E);
  C10_CUDA_CHECK(launch_load_balancing_loss(logits.data_ptr(), dtype_of(logits), indices.data_ptr<int32_t>(),
                                            optional_data<bool>(mask), T, static_cast<int>(E),
                                            static_cast<int>(indices.size(1)), counts.data_ptr<int32_t>(),
                                            partials.data_ptr<float>(), loss.data_ptr<float>(), current_stream()));
  return loss;
}

at::Tensor load_balancing_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& logits_in,
                                             const at::Tensor& indices_in, const std::optional<at::Tensor>& mask_in) {
  at::Tensor grad_logits = load_balancing_loss_backward_outputs(grad, logits_in, indices_in, mask_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor grad_scalar = grad.contiguous();
  const auto mask = contiguous_optional(mask_in);
  const int64_t T = logits.size(0), E = logits.size(1);
  at::Tensor counts = int_workspace(logits, E + 1);
  C10_CUDA_CHECK(launch_load_balancing_loss_backward(
      grad_scalar.data_ptr<float>(), logits.data_ptr(), dtype_of(logits), indices.data_ptr<int32_t>(),
      optional_data<bool>(mask), T, static_cast<int>(E), static_cast<int>(indices.size(1)), counts.data_ptr<int32_t>(),
      grad_logits.data_ptr(), current_stream()));
  return grad_logits;
}

at::Tensor router_z_loss_cuda(const at::Tensor& logits_in, const std::optional<at::Tensor>& mask_in) {
  at::Tensor loss = router_z_loss_outputs(logits_in, mask_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const auto mask = contiguous_optional(mask_in);
  const int64_t T = logits.size(0);
  at::Tensor token_count = int_workspace(logits, 1);
  at::Tensor partials = float_workspace(logits, loss_chunks(T));
  C10_CUDA_CHECK(launch_router_z_loss(logits.data_ptr(), dtype_of(logits), optional_data<bool>(mask), T,
                                      static_cast<int>(logits.size(1)), token_count.data_ptr<int32_t>(),
                                      partials.data_ptr<float>(), loss.data_ptr<float>(), current_stream()));
  return loss;
}

at::Tensor router_z_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& logits_in,
                                       const std::optional<at::Tensor>& mask_in) {
  at::Tensor grad_logits = router_z_loss_backward_outputs(grad, logits_in, mask_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor grad_scalar = grad.contiguous();
  const auto mask = contiguous_optional(mask_in);
  at::Tensor token_count = int_workspace(logits, 1);
  C10_CUDA_CHECK(launch_router_z_loss_backward(
      grad_scalar.data_ptr<float>(), logits.data_ptr(), dtype_of(logits), optional_data<bool>(mask), logits.size(0),
      static_cast<int>(logits.size(1)), token_count.data_ptr<int32_t>(), grad_logits.data_ptr(), current_stream()));
  return grad_logits;
}

// The fused op composes the two ops' launchers: top-k gating, then the balancing loss of its ids;
// the loss launcher's routed-slot counts are the routed_counts output.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_gating_with_balancing_loss_cuda(
    const at::Tensor& logits_in, int64_t k, bool normalize, const std::optional<at::Tensor>& mask_in) {
  auto [weights, indices, loss, routed_counts] =
      topk_gating_with_balancing_loss_outputs(logits_in, k, normalize, mask_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const auto mask = contiguous_optional(mask_in);
  const int64_t T = logits.size(0), E = logits.size(1);
  C10_CUDA_CHECK(launch_topk_gating(logits.data_ptr(), dtype_of(logits), T, static_cast<int>(E), static_cast<int>(k),
                                    normalize, weights.data_ptr<float>(), indices.data_ptr<int32_t>(),
                                    current_stream()));
  at::Tensor partials = float_workspace(logits, loss_chunks(T) * E);
  C10_CUDA_CHECK(launch_load_balancing_loss(logits.data_ptr(), dtype_of(logits), indices.data_ptr<int32_t>(),
                                            optional_data<bool>(mask), T, static_cast<int>(E), static_cast<int>(k),
                                            routed_counts.data_ptr<int32_t>(), partials.data_ptr<float>(),
                                            loss.data_ptr<float>(), current_stream()));
  return {weights, indices, loss, routed_counts};
}

// The sum of the two ops' gradients, each written by its own launcher (the balancing launcher
// recounts the routed slots on the device, so routed_counts is not read here).
at::Tensor topk_gating_with_balancing_loss_backward_cuda(const at::Tensor& grad_weights_in,
                                                         const at::Tensor& grad_loss_in, const at::Tensor& logits_in,
                                                         const at::Tensor& weights_in, const at::Tensor& indices_in,
                                                         const at::Tensor& routed_counts,
                                                         const std::optional<at::Tensor>& mask_in, bool normalize) {
  at::Tensor grad_logits = topk_gating_with_balancing_loss_backward_outputs(
      grad_weights_in, grad_loss_in, logits_in, weights_in, indices_in, routed_counts, mask_in, normalize);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), grad_weights = grad_weights_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor grad_loss = grad_loss_in.contiguous();
  const auto mask = contiguous_optional(mask_in);
  const int64_t T = logits.size(0), E = logits.size(1), k = indices.size(1);
  C10_CUDA_CHECK(launch_topk_gating_backward(grad_weights.data_ptr<float>(), logits.data_ptr(), dtype_of(logits),
                                             weights.data_ptr<float>(), indices.data_ptr<int32_t>(), T,
                                             static_cast<int>(E), static_cast<int>(k), normalize,
                                             grad_logits.data_ptr(), current_stream()));
  at::Tensor balance_grad = at::empty_like(grad_logits);
  at::Tensor counts = int_workspace(logits, E + 1);
  C10_CUDA_CHECK(launch_load_balancing_loss_backward(
      grad_loss.data_ptr<float>(), logits.data_ptr(), dtype_of(logits), indices.data_ptr<int32_t>(),
      optional_data<bool>(mask), T, static_cast<int>(E), static_cast<int>(k), counts.data_ptr<int32_t>(),
      balance_grad.data_ptr(), current_stream()));
  return grad_logits.add_(balance_grad);
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CUDA, m) {
  m.impl("topk_gating", &pesc::topk_gating_cuda);
  m.impl("topk_gating_backward", &pesc::topk_gating_backward_cuda);
  m.impl("load_balancing_loss", &pesc::load_balancing_loss_cuda);
  m.impl("load_balancing_loss_backward", &pesc::load_balancing_loss_backward_cuda);
  m.impl("router_z_loss", &pesc::router_z_loss_cuda);
  m.impl("router_z_loss_backward", &pesc::router_z_loss_backward_cuda);
  m.impl("topk_gating_with_balancing_loss", &pesc::topk_gating_with_balancing_loss_cuda);
  m.impl("topk_gating_with_balancing_loss_backward", &pesc::topk_gating_with_balancing_loss_backward_cuda);
}
