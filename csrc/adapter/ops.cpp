// Schemas, validation and output allocation of the grouped-GEMM ops (contract in ops.h), and their
// registration as Meta kernels. The CPU and CUDA kernels register themselves in cpu.cpp/cuda.cpp.
//
// The offsets' values are read only for CPU tensors: on CUDA that would need a host sync, so the
// CUDA kernels clamp them instead (adapter/segment_gemm.h) and never access memory out of bounds.
// offsets[E] may be below N: the rows past it are the slots permute(drop_invalid=True) dropped.
#include "adapter/ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <cmath>
#include <sstream>

#include "core/checks.h"
#include "core/tensor_utils.h"

namespace pesc {
namespace {

void check_like(const char* op, const at::Tensor& t, const char* arg, int64_t dim, const char* layout,
                const at::Tensor& x) {
  check_dim(op, t, dim, arg, layout);
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", arg, " must have the dtype of x (", x.scalar_type(),
                   "), got ", t.scalar_type());
  check_same_device(op, t, arg, x, "x");
}

void check_offsets_values_cpu(const char* op, const at::Tensor& offsets, int64_t N) {
  const at::Tensor o = offsets.contiguous();
  const int64_t* v = o.data_ptr<int64_t>();
  const int64_t E = o.numel() - 1;
  TORCH_CHECK_VALUE(v[0] == 0, op, ": expert_offsets[0] must be 0, got ", v[0]);
  for (int64_t e = 0; e < E; ++e) {
    TORCH_CHECK_VALUE(v[e] <= v[e + 1], op, ": expert_offsets must be non-decreasing, got expert_offsets[", e,
                      "]=", v[e], " > expert_offsets[", e + 1, "]=", v[e + 1]);
  }
  TORCH_CHECK_VALUE(v[E] <= N, op, ": expert_offsets[E=", E, "] must be <= the number of rows N=", N, " of x, got ",
                    v[E]);
}

void check_offsets(const char* op, const at::Tensor& offsets, const c10::SymInt& E, const at::Tensor& x) {
  check_dim(op, offsets, 1, "expert_offsets", "[E+1]");
  check_dtype(op, offsets, at::kLong, "expert_offsets");
  check_same_device(op, offsets, "expert_offsets", x, "x");
  check_size(op, offsets, 0, E + 1, "expert_offsets", "the number of experts E plus 1");
  if (offsets.device().is_cpu()) check_offsets_values_cpu(op, offsets, x.size(0));
}

c10::SymInt check_experts(const char* op, const at::Tensor& w, const char* arg) {
  TORCH_CHECK_VALUE(w.sym_size(0) >= 1, op, ": ", arg, ".shape[0] (number of experts E) must be >= 1, got shape ",
                    shape_string(w));
  return w.sym_size(0);
}

void check_grad_y(const char* op, const at::Tensor& grad_y, const at::Tensor& x, const c10::SymInt& cols,
                  const char* what) {
  check_like(op, grad_y, "grad_y", 2, "[N, M]", x);
  check_size(op, grad_y, 0, x.sym_size(0), "grad_y", "the number of rows N of x");
  check_size(op, grad_y, 1, cols, "grad_y", what);
}

// The output width M of grouped_mm: w [E, K, M], or [E, M, K] when w_transposed.
c10::SymInt grouped_mm_columns(const at::Tensor& w, bool w_transposed) { return w.sym_size(w_transposed ? 1 : 2); }

void check_grouped_mm_inputs(const char* op, const at::Tensor& x, const at::Tensor& w, const at::Tensor& expert_offsets,
                             bool w_transposed) {
  check_rows(op, x, "x", "[N, K]");
  check_like(op, w, "w", 3, w_transposed ? "[E, M, K] (w_transposed)" : "[E, K, M]", x);
  const c10::SymInt E = check_experts(op, w, "w");
  if (w_transposed) {
    check_size(op, w, 2, x.sym_size(1), "w", "x.shape[1] (K, w_transposed)");
  } else {
    check_size(op, w, 1, x.sym_size(1), "w", "x.shape[1] (K)");
  }
  check_offsets(op, expert_offsets, E, x);
}

void check_bias(const char* op, const std::optional<at::Tensor>& bias, const at::Tensor& x, const at::Tensor& w,
                bool w_transposed) {
  if (!bias.has_value()) return;
  check_like(op, *bias, "bias", 2, "[E, M]", x);
  check_size(op, *bias, 0, w.sym_size(0), "bias", "w.shape[0] (E)");
  check_size(op, *bias, 1, grouped_mm_columns(w, w_transposed), "bias", "the output width M of w");
}

// h [N, 2F] of gated_activation; returns F.
c10::SymInt check_gate_up(const char* op, const at::Tensor& h) {
  check_rows(op, h, "h", "[N, 2F]");
  TORCH_CHECK_VALUE(h.sym_size(1) % 2 == 0, op, ": h.shape[1] must be even (a gate and an up value per output), got ",
                    "shape ", shape_string(h));
  return h.sym_size(1) / 2;
}

void check_adapter_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_down, const at::Tensor& w_up,
                          const at::Tensor& expert_offsets) {
  check_rows(op, x, "x", "[N, d]");
  check_like(op, w_down, "w_down", 3, "[E, d, r]", x);
  check_like(op, w_up, "w_up", 3, "[E, r, d]", x);
  const c10::SymInt E = check_experts(op, w_down, "w_down");
  check_size(op, w_down, 1, x.sym_size(1), "w_down", "x.shape[1] (d)");
  TORCH_CHECK_VALUE(w_down.sym_size(2) >= 1, op, ": w_down.shape[2] (adapter rank r) must be >= 1, got shape ",
                    shape_string(w_down));
  check_size(op, w_up, 0, E, "w_up", "w_down.shape[0] (E)");
  check_size(op, w_up, 1, w_down.sym_size(2), "w_up", "w_down.shape[2] (r)");
  check_size(op, w_up, 2, x.sym_size(1), "w_up", "x.shape[1] (d)");
  check_offsets(op, expert_offsets, E, x);
}

}  // namespace

Activation parse_activation(const char* op, std::string_view name) {
  for (int i = 0; i < kNumActivations; ++i) {
    if (name == kActivationNames[i]) return static_cast<Activation>(i);
  }
  std::ostringstream valid;
  for (int i = 0; i < kNumActivations; ++i) valid << (i ? ", " : "") << kActivationNames[i];
  TORCH_CHECK_VALUE(false, op, ": unknown activation '", name, "'; valid: ", valid.str());
}

GatedKind parse_gated_kind(const char* op, std::string_view name, double limit, double alpha) {
  if (name == kClampedSwigluName) {
    TORCH_CHECK_VALUE(limit >= 0.0, op, ": limit must be >= 0, got ", limit);
    TORCH_CHECK_VALUE(std::isfinite(alpha), op, ": alpha must be finite, got ", alpha);
    return {Activation::Identity, true, static_cast<float>(limit), static_cast<float>(alpha)};
  }
  for (int i = 0; i < kNumActivations; ++i) {
    if (name == kActivationNames[i]) return {static_cast<Activation>(i), false, 0.f, 0.f};
  }
  std::ostringstream valid;
  for (int i = 0; i < kNumActivations; ++i) valid << kActivationNames[i] << ", ";
  TORCH_CHECK_VALUE(false, op, ": unknown activation '", name, "'; valid: ", valid.str(), kClampedSwigluName);
}

at::Tensor grouped_mm_outputs(const at::Tensor& x, const at::Tensor& w, const at::Tensor& expert_offsets,
                              const std::optional<at::Tensor>& bias, bool w_transposed) {
  const char* op = "pesc.grouped_mm";
  check_grouped_mm_inputs(op, x, w, expert_offsets, w_transposed);
  check_bias(op, bias, x, w, w_transposed);
  return at::empty_symint({x.sym_size(0), grouped_mm_columns(w, w_transposed)}, x.options());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_mm_backward_outputs(const at::Tensor& grad_y,
                                                                           const at::Tensor& x, const at::Tensor& w,
                                                                           const at::Tensor& expert_offsets,
                                                                           bool w_transposed,
                                                                           std::array<bool, 3> output_mask) {
  const char* op = "pesc.grouped_mm_backward";
  check_grouped_mm_inputs(op, x, w, expert_offsets, w_transposed);
  const c10::SymInt M = grouped_mm_columns(w, w_transposed);
  check_grad_y(op, grad_y, x, M, "the output width M of w");
  return {empty_unless(output_mask[0], x.sym_sizes(), x.options()),
          empty_unless(output_mask[1], w.sym_sizes(), x.options()),
          empty_unless(output_mask[2], {w.sym_size(0), M}, x.options())};
}

at::Tensor gated_activation_outputs(const at::Tensor& h, std::string_view activation, bool interleaved, double limit,
                                    double alpha) {
  const char* op = "pesc.gated_activation";
  parse_gated_kind(op, activation, limit, alpha);
  const c10::SymInt F = check_gate_up(op, h);
  return at::empty_symint({h.sym_size(0), F}, h.options());
}

at::Tensor gated_activation_backward_outputs(const at::Tensor& grad_a, const at::Tensor& h, std::string_view activation,
                                             bool interleaved, double limit, double alpha) {
  const char* op = "pesc.gated_activation_backward";
  parse_gated_kind(op, activation, limit, alpha);
  const c10::SymInt F = check_gate_up(op, h);
  check_dim(op, grad_a, 2, "grad_a", "[N, F]");
  check_same_dtype(op, grad_a, "grad_a", h, "h");
  check_same_device(op, grad_a, "grad_a", h, "h");
  check_size(op, grad_a, 0, h.sym_size(0), "grad_a", "the number of rows N of h");
  check_size(op, grad_a, 1, F, "grad_a", "h.shape[1] / 2 (F)");
  return at::empty_symint(h.sym_sizes(), h.options());
}

std::tuple<at::Tensor, at::Tensor> adapter_outputs(const at::Tensor& x, const at::Tensor& w_down,
                                                   const at::Tensor& w_up, const at::Tensor& expert_offsets,
                                                   std::string_view activation, double scaling) {
  const char* op = "pesc.adapter";
  parse_activation(op, activation);
  check_adapter_inputs(op, x, w_down, w_up, expert_offsets);
  return {at::empty_symint(x.sym_sizes(), x.options()),
          at::empty_symint({x.sym_size(0), w_down.sym_size(2)}, x.options())};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_backward_outputs(
    const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w_down, const at::Tensor& w_up,
    const at::Tensor& expert_offsets, const at::Tensor& h, std::string_view activation, double scaling,
    std::array<bool, 3> output_mask) {
  const char* op = "pesc.adapter_backward";
  parse_activation(op, activation);
  check_adapter_inputs(op, x, w_down, w_up, expert_offsets);
  check_grad_y(op, grad_y, x, x.sym_size(1), "x.shape[1] (d)");
  check_like(op, h, "h", 2, "[N, r]", x);
  check_size(op, h, 0, x.sym_size(0), "h", "the number of rows N of x");
  check_size(op, h, 1, w_down.sym_size(2), "h", "w_down.shape[2] (r)");
  return {empty_unless(output_mask[0], x.sym_sizes(), x.options()),
          empty_unless(output_mask[1], w_down.sym_sizes(), x.options()),
          empty_unless(output_mask[2], w_up.sym_sizes(), x.options())};
}

}  // namespace pesc

TORCH_LIBRARY_FRAGMENT(pesc, m) {
  // adapter also returns the pre-activation h = x @ w_down [N, r] that its backward reads (the
  // Python wrapper returns y only).
  m.def("grouped_mm(Tensor x, Tensor w, Tensor expert_offsets, Tensor? bias=None, bool w_transposed=False) -> Tensor");
  m.def(
      "grouped_mm_backward(Tensor grad_y, Tensor x, Tensor w, Tensor expert_offsets, bool w_transposed,"
      " bool[3] output_mask) -> (Tensor grad_x, Tensor grad_w, Tensor grad_bias)");
  m.def(
      "adapter(Tensor x, Tensor w_down, Tensor w_up, Tensor expert_offsets, str activation=\"gelu\","
      " float scaling=1.0) -> (Tensor y, Tensor h)");
  m.def(
      "adapter_backward(Tensor grad_y, Tensor x, Tensor w_down, Tensor w_up, Tensor expert_offsets, Tensor h,"
      " str activation, float scaling, bool[3] output_mask) -> (Tensor grad_x, Tensor grad_w_down, Tensor grad_w_up)");
  m.def(
      "gated_activation(Tensor h, str activation=\"silu\", bool interleaved=False, float limit=7.0,"
      " float alpha=1.702) -> Tensor");
  m.def(
      "gated_activation_backward(Tensor grad_a, Tensor h, str activation, bool interleaved, float limit,"
      " float alpha) -> Tensor");
}

TORCH_LIBRARY_IMPL(pesc, Meta, m) {
  m.impl("grouped_mm", &pesc::grouped_mm_outputs);
  m.impl("grouped_mm_backward", &pesc::grouped_mm_backward_outputs);
  m.impl("adapter", &pesc::adapter_outputs);
  m.impl("adapter_backward", &pesc::adapter_backward_outputs);
  m.impl("gated_activation", &pesc::gated_activation_outputs);
  m.impl("gated_activation_backward", &pesc::gated_activation_backward_outputs);
}
