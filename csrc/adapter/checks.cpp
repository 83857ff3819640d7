// Validators for the grouped GEMMs on expert segments: grouped_mm, adapter and their backwards.
//
// Layouts: x [N, K] (adapter: [N, d]) float (fp32/fp16/bf16); w [E, K, M]; w_down [E, d, r];
// w_up [E, r, d]; every weight, grad_y and h in x's dtype; expert_offsets [E+1] int64 with
// offsets[0] = 0, offsets[e] <= offsets[e+1] and offsets[E] = N. E >= 1; r >= 1; N, K, M, d >= 0.
// The offsets' values are read only for CPU tensors: on CUDA that would need a host sync, so the
// CUDA kernels clamp them instead (see cuda/segment_gemm.cuh) and never access memory out of bounds.
#include <c10/util/Exception.h>

#include <sstream>

#include "core/checks.h"

namespace pesc {
namespace {

void check_rows(const char* op, const at::Tensor& t, const char* arg, const char* layout) {
  check_dim(op, t, 2, arg, layout);
  check_float_dtype(op, t, arg);
}

void check_like(const char* op, const at::Tensor& t, const char* arg, int64_t dim, const char* layout,
                const at::Tensor& x) {
  check_dim(op, t, dim, arg, layout);
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": ", arg, " must have the dtype of x (",
                   x.scalar_type(), "), got ", t.scalar_type());
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
  TORCH_CHECK_VALUE(v[E] == N, op, ": expert_offsets[E=", E, "] must equal the number of rows N=", N, " of x, got ",
                    v[E]);
}

void check_offsets(const char* op, const at::Tensor& offsets, int64_t E, const at::Tensor& x) {
  check_dim(op, offsets, 1, "expert_offsets", "[E+1]");
  check_dtype(op, offsets, at::kLong, "expert_offsets");
  check_same_device(op, offsets, "expert_offsets", x, "x");
  check_size(op, offsets, 0, E + 1, "expert_offsets", "the number of experts E plus 1");
  if (offsets.device().is_cpu()) check_offsets_values_cpu(op, offsets, x.size(0));
}

int64_t check_experts(const char* op, const at::Tensor& w, const char* arg) {
  TORCH_CHECK_VALUE(w.size(0) >= 1, op, ": ", arg, ".shape[0] (number of experts E) must be >= 1, got shape ",
                    shape_string(w));
  return w.size(0);
}

void check_grad_y(const char* op, const at::Tensor& grad_y, const at::Tensor& x, int64_t cols, const char* what) {
  check_like(op, grad_y, "grad_y", 2, "[N, M]", x);
  check_size(op, grad_y, 0, x.size(0), "grad_y", "the number of rows N of x");
  check_size(op, grad_y, 1, cols, "grad_y", what);
}

void check_grouped_mm_inputs(const char* op, const at::Tensor& x, const at::Tensor& w,
                             const at::Tensor& expert_offsets) {
  check_rows(op, x, "x", "[N, K]");
  check_like(op, w, "w", 3, "[E, K, M]", x);
  const int64_t E = check_experts(op, w, "w");
  check_size(op, w, 1, x.size(1), "w", "x.shape[1] (K)");
  check_offsets(op, expert_offsets, E, x);
}

void check_adapter_inputs(const char* op, const at::Tensor& x, const at::Tensor& w_down, const at::Tensor& w_up,
                          const at::Tensor& expert_offsets) {
  check_rows(op, x, "x", "[N, d]");
  check_like(op, w_down, "w_down", 3, "[E, d, r]", x);
  check_like(op, w_up, "w_up", 3, "[E, r, d]", x);
  const int64_t E = check_experts(op, w_down, "w_down");
  check_size(op, w_down, 1, x.size(1), "w_down", "x.shape[1] (d)");
  TORCH_CHECK_VALUE(w_down.size(2) >= 1, op, ": w_down.shape[2] (adapter rank r) must be >= 1, got shape ",
                    shape_string(w_down));
  check_size(op, w_up, 0, E, "w_up", "w_down.shape[0] (E)");
  check_size(op, w_up, 1, w_down.size(2), "w_up", "w_down.shape[2] (r)");
  check_size(op, w_up, 2, x.size(1), "w_up", "x.shape[1] (d)");
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

void check_grouped_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& expert_offsets) {
  check_grouped_mm_inputs("pesc.grouped_mm", x, w, expert_offsets);
}

void check_grouped_mm_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w,
                               const at::Tensor& expert_offsets) {
  const char* op = "pesc.grouped_mm_backward";
  check_grouped_mm_inputs(op, x, w, expert_offsets);
  check_grad_y(op, grad_y, x, w.size(2), "w.shape[2] (M)");
}

Activation check_adapter(const at::Tensor& x, const at::Tensor& w_down, const at::Tensor& w_up,
                         const at::Tensor& expert_offsets, std::string_view activation) {
  const char* op = "pesc.adapter";
  const Activation act = parse_activation(op, activation);
  check_adapter_inputs(op, x, w_down, w_up, expert_offsets);
  return act;
}

Activation check_adapter_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w_down,
                                  const at::Tensor& w_up, const at::Tensor& expert_offsets, const at::Tensor& h,
                                  std::string_view activation) {
  const char* op = "pesc.adapter_backward";
  const Activation act = parse_activation(op, activation);
  check_adapter_inputs(op, x, w_down, w_up, expert_offsets);
  check_grad_y(op, grad_y, x, x.size(1), "x.shape[1] (d)");
  check_like(op, h, "h", 2, "[N, r]", x);
  check_size(op, h, 0, x.size(0), "h", "the number of rows N of x");
  check_size(op, h, 1, w_down.size(2), "h", "w_down.shape[2] (r)");
  return act;
}

}  // namespace pesc
