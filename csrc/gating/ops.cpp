// Schemas, validation and output allocation of the routing ops (contract in ops.h), and their
// registration as Meta kernels. The CPU and CUDA kernels register themselves in cpu.cpp/cuda.cpp.
#include "gating/ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <limits>

#include "core/checks.h"
#include "gating/math.h"

namespace pesc {
namespace {

void check_routing_indices(const char* op, const at::Tensor& logits, const at::Tensor& indices) {
  check_dim(op, indices, 2, "indices", "[T, k]");
  check_dtype(op, indices, at::kInt, "indices");
  check_same_device(op, indices, "indices", logits, "logits");
  check_size(op, indices, 0, logits.sym_size(0), "indices", "the number of tokens T of logits");
  const c10::SymInt& k = indices.sym_size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= logits.sym_size(1), op,
                    ": indices.shape[1] (k) must be in [1, E=", logits.sym_size(1), "], got ", k);
}

// [T, k] fp32 routing weights or their gradient, shaped like indices.
void check_routing_weights(const char* op, const at::Tensor& t, const char* arg, const at::Tensor& logits,
                           const at::Tensor& indices) {
  check_dim(op, t, 2, arg, "[T, k]");
  check_dtype(op, t, at::kFloat, arg);
  check_same_device(op, t, arg, logits, "logits");
  TORCH_CHECK_VALUE(t.sym_sizes() == indices.sym_sizes(), op, ": ", arg, " must have the shape of indices ",
                    shape_string(indices), ", got ", shape_string(t));
}

void check_router_mask(const char* op, const at::Tensor& logits, const std::optional<at::Tensor>& mask) {
  if (!mask.has_value()) return;
  check_dim(op, *mask, 1, "mask", "[T]");
  check_dtype(op, *mask, at::kBool, "mask");
  check_same_device(op, *mask, "mask", logits, "logits");
  check_size(op, *mask, 0, logits.sym_size(0), "mask", "the number of tokens T of logits");
}

void check_scalar_grad(const char* op, const at::Tensor& grad, const at::Tensor& logits, const char* arg = "grad") {
  check_defined(op, grad, arg);
  TORCH_CHECK_VALUE(grad.sym_numel() == 1, op, ": ", arg, " must be a scalar, got shape ", shape_string(grad));
  check_dtype(op, grad, at::kFloat, arg);
  check_same_device(op, grad, arg, logits, "logits");
}

// k in [1, E] with T * k fitting the int32 ids of the routed slots.
void check_top_k(const char* op, const at::Tensor& logits, int64_t k) {
  const c10::SymInt& T = logits.sym_size(0);
  const c10::SymInt& E = logits.sym_size(1);
  TORCH_CHECK_VALUE(k >= 1 && E >= k, op, ": k must be in [1, E=", E, "], got k=", k);
  TORCH_CHECK_VALUE(T * k <= std::numeric_limits<int32_t>::max(), op, ": T * k must fit in int32, got T=", T,
                    ", k=", k);
}

at::Tensor scalar_loss(const at::Tensor& logits) { return at::empty({}, logits.options().dtype(at::kFloat)); }
at::Tensor grad_like(const at::Tensor& logits) { return at::empty_symint(logits.sym_sizes(), logits.options()); }

}  // namespace

std::tuple<at::Tensor, at::Tensor> topk_gating_outputs(const at::Tensor& logits, int64_t k, bool normalize) {
  const char* op = "pesc.topk_gating";
  check_router_logits(op, logits);
  check_top_k(op, logits, k);
  const c10::SymInt& T = logits.sym_size(0);
  return {at::empty_symint({T, k}, logits.options().dtype(at::kFloat)),
          at::empty_symint({T, k}, logits.options().dtype(at::kInt))};
}

at::Tensor topk_gating_backward_outputs(const at::Tensor& grad_weights, const at::Tensor& logits,
                                        const at::Tensor& weights, const at::Tensor& indices, bool normalize) {
  const char* op = "pesc.topk_gating_backward";
  check_router_logits(op, logits);
  check_routing_indices(op, logits, indices);
  check_routing_weights(op, grad_weights, "grad_weights", logits, indices);
  check_routing_weights(op, weights, "weights", logits, indices);
  return grad_like(logits);
}

at::Tensor load_balancing_loss_outputs(const at::Tensor& logits, const at::Tensor& indices,
                                       const std::optional<at::Tensor>& mask) {
  const char* op = "pesc.load_balancing_loss";
  check_router_logits(op, logits);
  check_routing_indices(op, logits, indices);
  check_router_mask(op, logits, mask);
  return scalar_loss(logits);
}

at::Tensor load_balancing_loss_backward_outputs(const at::Tensor& grad, const at::Tensor& logits,
                                                const at::Tensor& indices, const std::optional<at::Tensor>& mask) {
  const char* op = "pesc.load_balancing_loss_backward";
  check_router_logits(op, logits);
  check_routing_indices(op, logits, indices);
  check_router_mask(op, logits, mask);
  check_scalar_grad(op, grad, logits);
  return grad_like(logits);
}

at::Tensor router_z_loss_outputs(const at::Tensor& logits, const std::optional<at::Tensor>& mask) {
  const char* op = "pesc.router_z_loss";
  check_router_logits(op, logits);
  check_router_mask(op, logits, mask);
  return scalar_loss(logits);
}

at::Tensor router_z_loss_backward_outputs(const at::Tensor& grad, const at::Tensor& logits,
                                          const std::optional<at::Tensor>& mask) {
  const char* op = "pesc.router_z_loss_backward";
  check_router_logits(op, logits);
  check_router_mask(op, logits, mask);
  check_scalar_grad(op, grad, logits);
  return grad_like(logits);
}

}  // namespace pesc

TORCH_LIBRARY_FRAGMENT(pesc, m) {
  m.def("topk_gating(Tensor logits, int k, bool normalize=True) -> (Tensor weights, Tensor indices)");
  m.def(
      "topk_gating_backward(Tensor grad_weights, Tensor logits, Tensor weights, Tensor indices, bool normalize)"
      " -> Tensor");
  m.def("load_balancing_loss(Tensor logits, Tensor indices, Tensor? mask=None) -> Tensor");
  m.def("load_balancing_loss_backward(Tensor grad, Tensor logits, Tensor indices, Tensor? mask) -> Tensor");
  m.def("router_z_loss(Tensor logits, Tensor? mask=None) -> Tensor");
  m.def("router_z_loss_backward(Tensor grad, Tensor logits, Tensor? mask) -> Tensor");
}

TORCH_LIBRARY_IMPL(pesc, Meta, m) {
  m.impl("topk_gating", &pesc::topk_gating_outputs);
  m.impl("topk_gating_backward", &pesc::topk_gating_backward_outputs);
  m.impl("load_balancing_loss", &pesc::load_balancing_loss_outputs);
  m.impl("load_balancing_loss_backward", &pesc::load_balancing_loss_backward_outputs);
  m.impl("router_z_loss", &pesc::router_z_loss_outputs);
  m.impl("router_z_loss_backward", &pesc::router_z_loss_backward_outputs);
}

// ---- topk_gating_with_balancing_loss: top-k gating and the balancing loss of its selection in one op.

namespace pesc {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> topk_gating_with_balancing_loss_outputs(
    const at::Tensor& logits, int64_t k, bool normalize, const std::optional<at::Tensor>& mask) {
  const char* op = "pesc.topk_gating_with_balancing_loss";
  check_router_logits(op, logits);
  check_top_k(op, logits, k);
  check_router_mask(op, logits, mask);
  const c10::SymInt& T = logits.sym_size(0);
  return {at::empty_symint({T, k}, logits.options().dtype(at::kFloat)),
          at::empty_symint({T, k}, logits.options().dtype(at::kInt)), scalar_loss(logits),
          at::empty_symint({logits.sym_size(1) + 1}, logits.options().dtype(at::kInt))};
}

at::Tensor topk_gating_with_balancing_loss_backward_outputs(const at::Tensor& grad_weights, const at::Tensor& grad_loss,
                                                            const at::Tensor& logits, const at::Tensor& weights,
                                                            const at::Tensor& indices, const at::Tensor& routed_counts,
                                                            const std::optional<at::Tensor>& mask, bool normalize) {
  const char* op = "pesc.topk_gating_with_balancing_loss_backward";
  check_router_logits(op, logits);
  check_routing_indices(op, logits, indices);
  check_routing_weights(op, grad_weights, "grad_weights", logits, indices);
  check_routing_weights(op, weights, "weights", logits, indices);
  check_scalar_grad(op, grad_loss, logits, "grad_loss");
  check_dim(op, routed_counts, 1, "routed_counts", "[E+1]");
  check_dtype(op, routed_counts, at::kInt, "routed_counts");
  check_same_device(op, routed_counts, "routed_counts", logits, "logits");
  check_size(op, routed_counts, 0, logits.sym_size(1) + 1, "routed_counts", "the number of experts E of logits plus 1");
  check_router_mask(op, logits, mask);
  return grad_like(logits);
}

}  // namespace pesc

TORCH_LIBRARY_FRAGMENT(pesc, m) {
  m.def(
      "topk_gating_with_balancing_loss(Tensor logits, int k, bool normalize=True, Tensor? mask=None)"
      " -> (Tensor weights, Tensor indices, Tensor loss, Tensor routed_counts)");
  m.def(
      "topk_gating_with_balancing_loss_backward(Tensor grad_weights, Tensor grad_loss, Tensor logits, Tensor weights,"
      " Tensor indices, Tensor routed_counts, Tensor? mask, bool normalize) -> Tensor");
}

TORCH_LIBRARY_IMPL(pesc, Meta, m) {
  m.impl("topk_gating_with_balancing_loss", &pesc::topk_gating_with_balancing_loss_outputs);
  m.impl("topk_gating_with_balancing_loss_backward", &pesc::topk_gating_with_balancing_loss_backward_outputs);
}
