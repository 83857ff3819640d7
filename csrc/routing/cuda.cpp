// CUDA entry points of grouped_topk_gating and its backward: validate and allocate the outputs
// (routing/ops.h), make inputs contiguous and call the launchers of routing/kernels.h on the current
// stream under a device guard. Nothing reads device memory, so there is no host sync; the
// backward's ids are therefore not range-checked on CUDA (out-of-range ids contribute nothing).
#include <ATen/ATen.h>

#include <torch/library.h>

#include "core/cuda_host.h"
#include "routing/kernels.h"
#include "routing/ops.h"

namespace pesc {
namespace {

std::tuple<at::Tensor, at::Tensor> grouped_topk_gating_cuda(const at::Tensor& logits_in, int64_t k,
                                                            std::string_view scoring,
                                                            const std::optional<at::Tensor>& bias_in,
                                                            int64_t num_groups, int64_t topk_groups, bool normalize,
                                                            double scaling) {
  auto [weights, indices] =
      grouped_topk_gating_outputs(logits_in, k, scoring, bias_in, num_groups, topk_groups, normalize, scaling);
  const RouterScore score = parse_router_score("pesc.grouped_topk_gating", scoring);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const auto bias = contiguous_optional(bias_in);
  const GroupedTopkParams p = grouped_topk_params(logits, k, score, num_groups, topk_groups, normalize, scaling);
  C10_CUDA_CHECK(launch_grouped_topk_gating(logits.data_ptr(), dtype_of(logits), optional_data<float>(bias),
                                            logits.size(0), p, weights.data_ptr<float>(), indices.data_ptr<int32_t>(),
                                            current_stream()));
  return {weights, indices};
}

at::Tensor grouped_topk_gating_backward_cuda(const at::Tensor& grad_weights_in, const at::Tensor& logits_in,
                                             const at::Tensor& indices_in, std::string_view scoring, bool normalize,
                                             double scaling) {
  at::Tensor grad_logits =
      grouped_topk_gating_backward_outputs(grad_weights_in, logits_in, indices_in, scoring, normalize, scaling);
  const RouterScore score = parse_router_score("pesc.grouped_topk_gating_backward", scoring);
  const c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor grad_weights = grad_weights_in.contiguous();
  const GroupedTopkParams p = grouped_topk_params(logits, indices.size(1), score, 1, 1, normalize, scaling);
  C10_CUDA_CHECK(launch_grouped_topk_gating_backward(grad_weights.data_ptr<float>(), logits.data_ptr(),
                                                     dtype_of(logits), indices.data_ptr<int32_t>(), logits.size(0), p,
                                                     grad_logits.data_ptr(), current_stream()));
  return grad_logits;
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CUDA, m) {
  m.impl("grouped_topk_gating", &pesc::grouped_topk_gating_cuda);
  m.impl("grouped_topk_gating_backward", &pesc::grouped_topk_gating_backward_cuda);
}
