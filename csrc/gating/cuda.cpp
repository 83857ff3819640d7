// CUDA entry points of the routing ops: validate (common/checks), make inputs contiguous, allocate
// outputs and workspaces through the caching allocator, and launch gating.cu's kernels on the current
// stream under a device guard. Nothing here reads device memory, so there is no host sync.
#include <ATen/ATen.h>

#include "core/checks.h"
#include "gating/kernels.h"
#include "core/cuda_host.h"
#include "ops.h"

namespace pesc {
namespace {

std::optional<at::Tensor> contiguous_mask(const std::optional<at::Tensor>& mask) {
  return mask.has_value() ? std::optional<at::Tensor>(mask->contiguous()) : std::nullopt;
}

at::Tensor int_workspace(const at::Tensor& like, int64_t n) { return at::empty({n}, like.options().dtype(at::kInt)); }
at::Tensor float_workspace(const at::Tensor& like, int64_t n) {
  return at::empty({n}, like.options().dtype(at::kFloat));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_gating_cuda(const at::Tensor& logits_in, int64_t k, bool normalize) {
  check_topk_gating(logits_in, k);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1);
  at::Tensor weights = at::empty({T, k}, logits.options().dtype(at::kFloat));
  at::Tensor indices = at::empty({T, k}, logits.options().dtype(at::kInt));
  C10_CUDA_CHECK(launch_topk_gating(logits.data_ptr(), dtype_of(logits), T, static_cast<int>(E), static_cast<int>(k),
                                    normalize, weights.data_ptr<float>(), indices.data_ptr<int32_t>(),
                                    current_stream()));
  return {weights, indices};
}

at::Tensor topk_gating_backward_cuda(const at::Tensor& grad_weights_in, const at::Tensor& logits_in,
                                     const at::Tensor& weights_in, const at::Tensor& indices_in, bool normalize) {
  check_topk_gating_backward(grad_weights_in, logits_in, weights_in, indices_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), grad_weights = grad_weights_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), indices = indices_in.contiguous();
  at::Tensor grad_logits = at::empty_like(logits);
  C10_CUDA_CHECK(launch_topk_gating_backward(
      grad_weights.data_ptr<float>(), logits.data_ptr(), dtype_of(logits), weights.data_ptr<float>(),
      indices.data_ptr<int32_t>(), logits.size(0), static_cast<int>(logits.size(1)),
      static_cast<int>(indices.size(1)), normalize, grad_logits.data_ptr(), current_stream()));
  return grad_logits;
}

at::Tensor load_balancing_loss_cuda(const at::Tensor& logits_in, const at::Tensor& indices_in,
                                    const std::optional<at::Tensor>& mask_in) {
  check_load_balancing_loss(logits_in, indices_in, mask_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), indices = indices_in.contiguous();
  const auto mask = contiguous_mask(mask_in);
  const int64_t T = logits.size(0), E = logits.size(1);
  at::Tensor counts = int_workspace(logits, E + 1);
  at::Tensor partials = float_workspace(logits, loss_chunks(T) * E);
  at::Tensor loss = at::empty({}, logits.options().dtype(at::kFloat));
  C10_CUDA_CHECK(launch_load_balancing_loss(logits.data_ptr(), dtype_of(logits), indices.data_ptr<int32_t>(),
                                            optional_data<bool>(mask), T, static_cast<int>(E),
                                            static_cast<int>(indices.size(1)), counts.data_ptr<int32_t>(),
                                            partials.data_ptr<float>(), loss.data_ptr<float>(), current_stream()));
  return loss;
}

at::Tensor load_balancing_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& logits_in,
                                             const at::Tensor& indices_in, const std::optional<at::Tensor>& mask_in) {
  check_load_balancing_loss(logits_in, indices_in, mask_in);
  check_scalar_grad("pesc.load_balancing_loss_backward", grad, logits_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor grad_scalar = grad.contiguous();
  const auto mask = contiguous_mask(mask_in);
  const int64_t T = logits.size(0), E = logits.size(1);
  at::Tensor counts = int_workspace(logits, E + 1);
  at::Tensor grad_logits = at::empty_like(logits);
  C10_CUDA_CHECK(launch_load_balancing_loss_backward(
      grad_scalar.data_ptr<float>(), logits.data_ptr(), dtype_of(logits), indices.data_ptr<int32_t>(),
      optional_data<bool>(mask), T, static_cast<int>(E), static_cast<int>(indices.size(1)), counts.data_ptr<int32_t>(),
      grad_logits.data_ptr(), current_stream()));
  return grad_logits;
}

at::Tensor router_z_loss_cuda(const at::Tensor& logits_in, const std::optional<at::Tensor>& mask_in) {
  check_router_z_loss(logits_in, mask_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const auto mask = contiguous_mask(mask_in);
  const int64_t T = logits.size(0);
  at::Tensor token_count = int_workspace(logits, 1);
  at::Tensor partials = float_workspace(logits, loss_chunks(T));
  at::Tensor loss = at::empty({}, logits.options().dtype(at::kFloat));
  C10_CUDA_CHECK(launch_router_z_loss(logits.data_ptr(), dtype_of(logits), optional_data<bool>(mask), T,
                                      static_cast<int>(logits.size(1)), token_count.data_ptr<int32_t>(),
                                      partials.data_ptr<float>(), loss.data_ptr<float>(), current_stream()));
  return loss;
}

at::Tensor router_z_loss_backward_cuda(const at::Tensor& grad, const at::Tensor& logits_in,
                                       const std::optional<at::Tensor>& mask_in) {
  check_router_z_loss(logits_in, mask_in);
  check_scalar_grad("pesc.router_z_loss_backward", grad, logits_in);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor grad_scalar = grad.contiguous();
  const auto mask = contiguous_mask(mask_in);
  at::Tensor token_count = int_workspace(logits, 1);
  at::Tensor grad_logits = at::empty_like(logits);
  C10_CUDA_CHECK(launch_router_z_loss_backward(grad_scalar.data_ptr<float>(), logits.data_ptr(), dtype_of(logits),
                                               optional_data<bool>(mask), logits.size(0),
                                               static_cast<int>(logits.size(1)), token_count.data_ptr<int32_t>(),
                                               grad_logits.data_ptr(), current_stream()));
  return grad_logits;
}

}  // namespace pesc
