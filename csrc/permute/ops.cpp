// Schemas, validation and output allocation of the permutation ops (contract in ops.h), and their
// registration as Meta kernels. The CPU and CUDA kernels register themselves in cpu.cpp/cuda.cpp.
#include "permute/ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <limits>
#include <vector>

#include "core/checks.h"
#include "core/limits.h"
#include "permute/math.h"

namespace pesc {
namespace {

constexpr int64_t kMaxRows = std::numeric_limits<int32_t>::max();

// [T, k] int32 routing layout (row_map; indices may also be int64) on `like`'s device.
void check_slots(const char* op, const at::Tensor& slots, const char* arg, const at::Tensor& like, const char* like_arg,
                 bool allow_int64 = false) {
  check_dim(op, slots, 2, arg, "[T, k]");
  if (allow_int64) {
    TORCH_CHECK_TYPE(slots.scalar_type() == at::kInt || slots.scalar_type() == at::kLong, op, ": ", arg,
                     " must be Int or Long, got ", slots.scalar_type());
  } else {
    check_dtype(op, slots, at::kInt, arg);
  }
  check_same_device(op, slots, arg, like, like_arg);
  TORCH_CHECK_VALUE(slots.sym_size(1) >= 1, op, ": ", arg, ".shape[1] (k) must be >= 1, got shape ",
                    shape_string(slots));
  TORCH_CHECK_VALUE(slots.sym_numel() <= kMaxRows, op, ": T * k must fit in int32, got ", arg, " of shape ",
                    shape_string(slots));
}

void check_weights(const char* op, const std::optional<at::Tensor>& weights, const at::Tensor& row_map) {
  if (!weights.has_value()) return;
  check_dim(op, *weights, 2, "weights", "[T, k]");
  check_float_dtype(op, *weights, "weights");
  check_same_device(op, *weights, "weights", row_map, "row_map");
  TORCH_CHECK_VALUE(weights->sym_sizes() == row_map.sym_sizes(), op, ": weights must have the shape of row_map ",
                    shape_string(row_map), ", got ", shape_string(*weights));
}

// A [T, d] or [N, d] float tensor that must match `like` ([., d]) in dtype, device and width.
void check_matching_rows(const char* op, const at::Tensor& t, const char* arg, const char* layout,
                         const c10::SymInt& expected_rows, const char* rows_what, const at::Tensor& like,
                         const char* like_arg) {
  check_rows(op, t, arg, layout);
  check_same_dtype(op, t, arg, like, like_arg);
  check_same_device(op, t, arg, like, like_arg);
  check_size(op, t, 0, expected_rows, arg, rows_what);
  check_size(op, t, 1, like.sym_size(1), arg, "the row width d");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> permute_outputs(const at::Tensor& x, const at::Tensor& indices,
                                                               int64_t num_experts, bool drop_invalid) {
  const char* op = "pesc.permute";
  check_rows(op, x, "x", "[T, d]");
  check_slots(op, indices, "indices", x, "x", /*allow_int64=*/true);
  check_size(op, indices, 0, x.sym_size(0), "indices", "the number of tokens T of x");
  TORCH_CHECK_VALUE(num_experts >= 1 && num_experts <= kMaxExperts, op, ": num_experts must be in [1, ", kMaxExperts,
                    "], got ", num_experts);
  return {at::empty_symint({indices.sym_numel(), x.sym_size(1)}, x.options()),
          at::empty_symint(indices.sym_sizes(), indices.options().dtype(at::kInt)),
          at::empty({num_experts + 1}, x.options().dtype(at::kLong))};
}

at::Tensor unpermute_outputs(const at::Tensor& y_perm, const at::Tensor& row_map,
                             const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& residual) {
  const char* op = "pesc.unpermute";
  check_rows(op, y_perm, "y_perm", "[N, d]");
  check_slots(op, row_map, "row_map", y_perm, "y_perm");
  check_size(op, y_perm, 0, row_map.sym_numel(), "y_perm", "the number of routed rows N = T*k of row_map");
  check_weights(op, weights, row_map);
  if (residual.has_value())
    check_matching_rows(op, *residual, "residual", "[T, d]", row_map.sym_size(0), "the number of tokens T of row_map",
                        y_perm, "y_perm");
  return at::empty_symint({row_map.sym_size(0), y_perm.sym_size(1)}, y_perm.options());
}

std::tuple<at::Tensor, at::Tensor> unpermute_backward_outputs(const at::Tensor& grad_y, const at::Tensor& row_map,
                                                              const std::optional<at::Tensor>& weights,
                                                              const std::optional<at::Tensor>& y_perm) {
  const char* op = "pesc.unpermute_backward";
  check_rows(op, grad_y, "grad_y", "[T, d]");
  check_slots(op, row_map, "row_map", grad_y, "grad_y");
  check_size(op, row_map, 0, grad_y.sym_size(0), "row_map", "the number of tokens T of grad_y");
  check_weights(op, weights, row_map);
  if (y_perm.has_value())
    check_matching_rows(op, *y_perm, "y_perm", "[N, d]", row_map.sym_numel(),
                        "the number of routed rows N = T*k of row_map", grad_y, "grad_y");
  const auto weights_options = grad_y.options().dtype(weights.has_value() ? weights->scalar_type() : at::kFloat);
  return {
      at::empty_symint({row_map.sym_numel(), grad_y.sym_size(1)}, grad_y.options()),
      y_perm.has_value() ? at::empty_symint(row_map.sym_sizes(), weights_options) : at::empty({0}, weights_options)};
}

void check_row_map_cpu(const char* op, const at::Tensor& row_map) {
  const at::Tensor flat = row_map.contiguous();
  const int32_t* data = flat.data_ptr<int32_t>();
  const int64_t n = flat.numel();
  const int64_t k = flat.size(1);
  std::vector<bool> seen(n, false);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t row = decoded_row(data[i]);
    TORCH_CHECK_INDEX(row >= 0 && row < n, op, ": row_map holds row ", row, " at [", i / k, ", ", i % k,
                      "], outside [0, N=", n, "); row_map must be the permutation that permute returns");
    TORCH_CHECK_VALUE(!seen[row], op, ": row_map holds row ", row, " twice (again at [", i / k, ", ", i % k,
                      "]); row_map must be the permutation that permute returns");
    seen[row] = true;
  }
}

std::optional<at::Tensor> weights_fp32(const std::optional<at::Tensor>& weights) {
  if (!weights.has_value()) return std::nullopt;
  return weights->to(at::kFloat).contiguous();
}

}  // namespace pesc

TORCH_LIBRARY_FRAGMENT(pesc, m) {
  // permute's backward is unpermute with no weights or residual.
  m.def(
      "permute(Tensor x, Tensor indices, int num_experts, bool drop_invalid=False)"
      " -> (Tensor x_perm, Tensor row_map, Tensor expert_offsets)");
  m.def("unpermute(Tensor y_perm, Tensor row_map, Tensor? weights=None, Tensor? residual=None) -> Tensor");
  m.def(
      "unpermute_backward(Tensor grad_y, Tensor row_map, Tensor? weights, Tensor? y_perm)"
      " -> (Tensor grad_y_perm, Tensor grad_weights)");
}

TORCH_LIBRARY_IMPL(pesc, Meta, m) {
  m.impl("permute", &pesc::permute_outputs);
  m.impl("unpermute", &pesc::unpermute_outputs);
  m.impl("unpermute_backward", &pesc::unpermute_backward_outputs);
}
