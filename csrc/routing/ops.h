// The contract of the grouped top-k routing op, shared by every backend (docs/design.md, "Routing variants"):
//
//   grouped_topk_gating(logits[T,E], k, scoring, bias[E] fp32?, num_groups, topk_groups, normalize, scaling)
//       -> weights[T,k] fp32, indices[T,k] int32
//   grouped_topk_gating_backward(grad_weights[T,k] fp32, logits, indices, scoring, normalize, scaling)
//       -> grad_logits[T,E] (dtype of logits)
// logits fp32/fp16/bf16; 1 <= E <= 1024; scoring "softmax" or "sigmoid"; num_groups divides E;
// 1 <= topk_groups <= num_groups; 1 <= k <= topk_groups * E / num_groups; T*k < 2^31.
//
// Each <op>_outputs validates every argument and allocates the op's (contiguous) outputs. It is the
// op's Meta kernel (registered in ops.cpp) and the first step of its CPU and CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>
#include <tuple>

#include "routing/math.h"

namespace pesc {

std::tuple<at::Tensor, at::Tensor> grouped_topk_gating_outputs(const at::Tensor& logits, int64_t k,
                                                               std::string_view scoring,
                                                               const std::optional<at::Tensor>& bias,
                                                               int64_t num_groups, int64_t topk_groups, bool normalize,
                                                               double scaling);
at::Tensor grouped_topk_gating_backward_outputs(const at::Tensor& grad_weights, const at::Tensor& logits,
                                                const at::Tensor& indices, std::string_view scoring, bool normalize,
                                                double scaling);

// The RouterScore a `scoring` string names (ValueError otherwise).
RouterScore parse_router_score(const char* op, std::string_view scoring);

// The kernel parameters of a validated call (num_groups = topk_groups = 1 for the backward).
GroupedTopkParams grouped_topk_params(const at::Tensor& logits, int64_t k, RouterScore score, int64_t num_groups,
                                      int64_t topk_groups, bool normalize, double scaling);

}  // namespace pesc
