// Generic argument checks used by every op's validator (see checks.h).
#include "core/checks.h"

#include "core/limits.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <sstream>

namespace pesc {

std::string shape_string(const at::Tensor& t) {
  std::ostringstream out;
  out << t.sym_sizes();
  return out.str();
}

void check_defined(const char* op, const at::Tensor& t, const char* arg) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", arg, " is an undefined tensor");
}

void check_dim(const char* op, const at::Tensor& t, int64_t dim, const char* arg, const char* layout) {
  check_defined(op, t, arg);
  TORCH_CHECK_VALUE(t.dim() == dim, op, ": ", arg, " must be a ", dim, "-D tensor ", layout, ", got shape ",
                    shape_string(t));
}

void check_float_dtype(const char* op, const at::Tensor& t, const char* arg) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, op, ": ", arg,
                   " must be float32, float16 or bfloat16, got ", dtype);
}

void check_dtype(const char* op, const at::Tensor& t, at::ScalarType dtype, const char* arg) {
  TORCH_CHECK_TYPE(t.scalar_type() == dtype, op, ": ", arg, " must be ", dtype, ", got ", t.scalar_type());
}

void check_same_dtype(const char* op, const at::Tensor& t, const char* arg, const at::Tensor& like,
                      const char* like_arg) {
  TORCH_CHECK_TYPE(t.scalar_type() == like.scalar_type(), op, ": ", arg, " must have the dtype of ", like_arg, " (",
                   like.scalar_type(), "), got ", t.scalar_type());
}

void check_same_device(const char* op, const at::Tensor& a, const char* a_arg, const at::Tensor& b, const char* b_arg) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", a_arg, " is on ", a.device(), " but ", b_arg, " is on ",
                    b.device(), "; all tensors must be on the same device");
}

void check_size(const char* op, const at::Tensor& t, int64_t dim, const c10::SymInt& expected, const char* arg,
                const char* what) {
  TORCH_CHECK_VALUE(t.sym_size(dim) == expected, op, ": ", arg, ".shape[", dim, "] must equal ", what, " (", expected,
                    "), got shape ", shape_string(t));
}

void check_rows(const char* op, const at::Tensor& t, const char* arg, const char* layout) {
  check_dim(op, t, 2, arg, layout);
  check_float_dtype(op, t, arg);
}

void check_expert_ids_cpu(const char* op, const at::Tensor& ids, int64_t num_experts, const char* arg) {
  const at::Tensor flat = ids.contiguous();
  const int32_t* data = flat.data_ptr<int32_t>();
  const int64_t n = flat.numel();
  const int64_t cols = flat.dim() >= 2 ? flat.size(-1) : 1;
  // First a branch-free maximum the compiler vectorises (this check runs on every backward call);
  // as unsigned values, negative ids compare above every valid one.
  uint32_t largest = 0;
  for (int64_t i = 0; i < n; ++i) largest = std::max(largest, static_cast<uint32_t>(data[i]));
  if (n == 0 || static_cast<int64_t>(largest) < num_experts) return;
  for (int64_t i = 0; i < n; ++i) {
    if (data[i] < 0 || data[i] >= num_experts) {
      TORCH_CHECK_INDEX(false, op, ": ", arg, " holds expert id ", data[i], " at [", i / cols, ", ", i % cols,
                        "], outside [0, num_experts=", num_experts, ")");
    }
  }
}

void check_router_logits(const char* op, const at::Tensor& logits) {
  check_dim(op, logits, 2, "logits", "[T, E]");
  check_float_dtype(op, logits, "logits");
  const c10::SymInt& E = logits.sym_size(1);
  TORCH_CHECK_VALUE(E >= 1 && E <= kMaxExperts, op, ": logits.shape[1] (number of experts E) must be in [1, ",
                    kMaxExperts, "], got ", E);
}

}  // namespace pesc
