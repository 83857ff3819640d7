// Validators for the routing ops: topk_gating, load_balancing_loss, router_z_loss and backwards.
//
// Layouts: logits [T, E] float (fp32/fp16/bf16), weights [T, k] fp32, indices [T, k] int32,
// mask [T] bool (True = the token counts). 1 <= E <= kMaxExperts, 1 <= k <= E, T * k < 2^31.
#include <c10/util/Exception.h>

#include <limits>

#include "core/checks.h"
#include "gating/math.h"

namespace pesc {
namespace {

void check_logits(const char* op, const at::Tensor& logits) {
  check_dim(op, logits, 2, "logits", "[T, E]");
  check_float_dtype(op, logits, "logits");
  const int64_t E = logits.size(1);
  TORCH_CHECK_VALUE(E >= 1 && E <= kMaxExperts, op, ": logits.shape[1] (number of experts E) must be in [1, ",
                    kMaxExperts, "], got ", E);
}

void check_routing_indices(const char* op, const at::Tensor& logits, const at::Tensor& indices) {
  check_dim(op, indices, 2, "indices", "[T, k]");
  check_dtype(op, indices, at::kInt, "indices");
  check_same_device(op, indices, "indices", logits, "logits");
  check_size(op, indices, 0, logits.size(0), "indices", "the number of tokens T of logits");
  const int64_t k = indices.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= logits.size(1), op, ": indices.shape[1] (k) must be in [1, E=", logits.size(1),
                    "], got ", k);
}

}  // namespace

void check_topk_gating(const at::Tensor& logits, int64_t k) {
  const char* op = "pesc.topk_gating";
  check_logits(op, logits);
  const int64_t E = logits.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= E, op, ": k must be in [1, E=", E, "], got k=", k);
  TORCH_CHECK_VALUE(logits.size(0) * k <= std::numeric_limits<int32_t>::max(), op,
                    ": T * k must fit in int32, got T=", logits.size(0), ", k=", k);
}

void check_topk_gating_backward(const at::Tensor& grad_weights, const at::Tensor& logits, const at::Tensor& weights,
                                const at::Tensor& indices) {
  const char* op = "pesc.topk_gating_backward";
  check_logits(op, logits);
  check_routing_indices(op, logits, indices);
  for (const auto* pair : {&grad_weights, &weights}) {
    const char* arg = pair == &weights ? "weights" : "grad_weights";
    check_dim(op, *pair, 2, arg, "[T, k]");
    check_dtype(op, *pair, at::kFloat, arg);
    check_same_device(op, *pair, arg, logits, "logits");
    TORCH_CHECK_VALUE(pair->sizes() == indices.sizes(), op, ": ", arg, " must have the shape of indices ",
                      shape_string(indices), ", got ", shape_string(*pair));
  }
}

void check_router_mask(const char* op, const at::Tensor& logits, const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return;
  check_dim(op, *mask, 1, "mask", "[T]");
  check_dtype(op, *mask, at::kBool, "mask");
  check_same_device(op, *mask, "mask", logits, "logits");
  check_size(op, *mask, 0, logits.size(0), "mask", "the number of tokens T of logits");
}

void check_load_balancing_loss(const at::Tensor& logits, const at::Tensor& indices,
                               const std::optional<at::Tensor>& mask) {
  const char* op = "pesc.load_balancing_loss";
  check_logits(op, logits);
  check_routing_indices(op, logits, indices);
  check_router_mask(op, logits, mask);
}

void check_router_z_loss(const at::Tensor& logits, const std::optional<at::Tensor>& mask) {
  const char* op = "pesc.router_z_loss";
  check_logits(op, logits);
  check_router_mask(op, logits, mask);
}

void check_scalar_grad(const char* op, const at::Tensor& grad, const at::Tensor& logits) {
  check_defined(op, grad, "grad");
  TORCH_CHECK_VALUE(grad.numel() == 1, op, ": grad must be a scalar, got shape ", shape_string(grad));
  check_dtype(op, grad, at::kFloat, "grad");
  check_same_device(op, grad, "grad", logits, "logits");
}

}  // namespace pesc
