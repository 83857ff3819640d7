// Schemas, validation and output allocation of the grouped top-k routing op (contract in ops.h),
// and their registration as Meta kernels. The CPU and CUDA kernels register themselves in
// cpu.cpp/cuda.cpp. The schemas are a fragment of their own, next to the gating family's.
#include "routing/ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "core/checks.h"

namespace pesc {
namespace {

void check_scaling(const char* op, double scaling) {
  TORCH_CHECK_VALUE(std::isfinite(scaling), op, ": scaling must be finite, got ", scaling);
}

}  // namespace

RouterScore parse_router_score(const char* op, std::string_view scoring) {
  if (scoring == "softmax") return RouterScore::Softmax;
  if (scoring == "sigmoid") return RouterScore::Sigmoid;
  TORCH_CHECK_VALUE(false, op, ": unknown scoring '", scoring, "'; valid: softmax, sigmoid");
}

GroupedTopkParams grouped_topk_params(const at::Tensor& logits, int64_t k, RouterScore score, int64_t num_groups,
                                      int64_t topk_groups, bool normalize, double scaling) {
  return {static_cast<int>(logits.size(1)),
          static_cast<int>(k),
          static_cast<int>(num_groups),
          static_cast<int>(topk_groups),
          score,
          normalize,
          static_cast<float>(scaling)};
}

std::tuple<at::Tensor, at::Tensor> grouped_topk_gating_outputs(const at::Tensor& logits, int64_t k,
                                                               std::string_view scoring,
                                                               const std::optional<at::Tensor>& bias,
                                                               int64_t num_groups, int64_t topk_groups, bool normalize,
                                                               double scaling) {
  const char* op = "pesc.grouped_topk_gating";
  check_router_logits(op, logits);
  parse_router_score(op, scoring);
  check_scaling(op, scaling);
  const c10::SymInt& T = logits.sym_size(0);
  const c10::SymInt& E = logits.sym_size(1);
  TORCH_CHECK_VALUE(num_groups >= 1 && E % num_groups == 0, op, ": num_groups must be >= 1 and divide E=", E, ", got ",
                    num_groups);
  TORCH_CHECK_VALUE(topk_groups >= 1 && topk_groups <= num_groups, op,
                    ": topk_groups must be in [1, num_groups=", num_groups, "], got ", topk_groups);
  const c10::SymInt eligible = E / num_groups * topk_groups;
  TORCH_CHECK_VALUE(k >= 1 && eligible >= k, op, ": k must be in [1, topk_groups * E / num_groups = ", eligible,
                    "], got k=", k);
  TORCH_CHECK_VALUE(T * k <= std::numeric_limits<int32_t>::max(), op, ": T * k must fit in int32, got T=", T,
                    ", k=", k);
  if (bias.has_value()) {
    check_dim(op, *bias, 1, "bias", "[E]");
    check_dtype(op, *bias, at::kFloat, "bias");
    check_same_device(op, *bias, "bias", logits, "logits");
    check_size(op, *bias, 0, E, "bias", "the number of experts E of logits");
  }
  return {at::empty_symint({T, k}, logits.options().dtype(at::kFloat)),
          at::empty_symint({T, k}, logits.options().dtype(at::kInt))};
}

at::Tensor grouped_topk_gating_backward_outputs(const at::Tensor& grad_weights, const at::Tensor& logits,
                                                const at::Tensor& indices, std::string_view scoring, bool normalize,
                                                double scaling) {
  const char* op = "pesc.grouped_topk_gating_backward";
  check_router_logits(op, logits);
  parse_router_score(op, scoring);
  check_scaling(op, scaling);
  check_dim(op, indices, 2, "indices", "[T, k]");
  check_dtype(op, indices, at::kInt, "indices");
  check_same_device(op, indices, "indices", logits, "logits");
  check_size(op, indices, 0, logits.sym_size(0), "indices", "the number of tokens T of logits");
  TORCH_CHECK_VALUE(indices.sym_size(1) >= 1 && indices.sym_size(1) <= logits.sym_size(1), op,
                    ": indices.shape[1] (k) must be in [1, E=", logits.sym_size(1), "], got ", indices.sym_size(1));
  check_dim(op, grad_weights, 2, "grad_weights", "[T, k]");
  check_dtype(op, grad_weights, at::kFloat, "grad_weights");
  check_same_device(op, grad_weights, "grad_weights", logits, "logits");
  TORCH_CHECK_VALUE(grad_weights.sym_sizes() == indices.sym_sizes(), op,
                    ": grad_weights must have the shape of indices ", shape_string(indices), ", got ",
                    shape_string(grad_weights));
  return at::empty_symint(logits.sym_sizes(), logits.options());
}

}  // namespace pesc

TORCH_LIBRARY_FRAGMENT(pesc, m) {
  m.def(
      "grouped_topk_gating(Tensor logits, int k, str scoring=\"softmax\", Tensor? bias=None, int num_groups=1,"
      " int topk_groups=1, bool normalize=True, float scaling=1.0) -> (Tensor weights, Tensor indices)");
  m.def(
      "grouped_topk_gating_backward(Tensor grad_weights, Tensor logits, Tensor indices, str scoring, bool normalize,"
      " float scaling) -> Tensor");
}

TORCH_LIBRARY_IMPL(pesc, Meta, m) {
  m.impl("grouped_topk_gating", &pesc::grouped_topk_gating_outputs);
  m.impl("grouped_topk_gating_backward", &pesc::grouped_topk_gating_backward_outputs);
}
