// Input validation for every op, shared by the CPU and CUDA entry points (the one place checks live).
//
// Each failure raises c10::Error (Python: RuntimeError/ValueError/TypeError per TORCH_CHECK_* kind)
// with a message that names the op, the argument and what was expected.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string>
#include <string_view>

#include "adapter/activations.h"

namespace pesc {

std::string shape_string(const at::Tensor& t);

// Generic checks: `op` is the public op name, `arg` the argument name.
void check_defined(const char* op, const at::Tensor& t, const char* arg);
void check_dim(const char* op, const at::Tensor& t, int64_t dim, const char* arg, const char* layout);
void check_float_dtype(const char* op, const at::Tensor& t, const char* arg);  // fp32, fp16 or bf16
void check_dtype(const char* op, const at::Tensor& t, at::ScalarType dtype, const char* arg);
void check_same_device(const char* op, const at::Tensor& a, const char* a_arg, const at::Tensor& b, const char* b_arg);
void check_size(const char* op, const at::Tensor& t, int64_t dim, int64_t expected, const char* arg, const char* what);
void check_same_dtype(const char* op, const at::Tensor& t, const char* arg, const at::Tensor& like, const char* like_arg);

// Reads the data (CPU tensors only): every int32 id in `ids` must lie in [0, num_experts); the error
// names the first offending value and its position.
void check_expert_ids_cpu(const char* op, const at::Tensor& ids, int64_t num_experts, const char* arg);

// ---- routing (csrc/common/checks_gating.cpp) ----
void check_topk_gating(const at::Tensor& logits, int64_t k);
void check_topk_gating_backward(const at::Tensor& grad_weights, const at::Tensor& logits, const at::Tensor& weights,
                                const at::Tensor& indices);
void check_router_mask(const char* op, const at::Tensor& logits, const std::optional<at::Tensor>& mask);
void check_load_balancing_loss(const at::Tensor& logits, const at::Tensor& indices,
                               const std::optional<at::Tensor>& mask);
void check_router_z_loss(const at::Tensor& logits, const std::optional<at::Tensor>& mask);
void check_scalar_grad(const char* op, const at::Tensor& grad, const at::Tensor& logits);

// ---- permutation (csrc/common/checks_permute.cpp) ----
void check_permute(const at::Tensor& x, const at::Tensor& indices, int64_t num_experts);
void check_unpermute(const at::Tensor& y_perm, const at::Tensor& row_map, const std::optional<at::Tensor>& weights,
                     const std::optional<at::Tensor>& residual);
void check_unpermute_backward(const at::Tensor& grad_y, const at::Tensor& row_map,
                              const std::optional<at::Tensor>& weights, const std::optional<at::Tensor>& y_perm);
// Reads the data (CPU tensors only): row_map [T, k] must be a permutation of [0, T*k), as permute
// returns it; the error names the first out-of-range or repeated entry and its position.
void check_row_map_cpu(const char* op, const at::Tensor& row_map);

// ---- grouped GEMMs on expert segments (csrc/common/checks_adapter.cpp) ----
// Shapes, dtypes and devices always; the offsets' values (offsets[0] == 0, monotone,
// offsets[E] == N) only when they live on the CPU, since reading device memory would sync.
Activation parse_activation(const char* op, std::string_view name);
void check_grouped_mm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& expert_offsets);
void check_grouped_mm_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w,
                               const at::Tensor& expert_offsets);
Activation check_adapter(const at::Tensor& x, const at::Tensor& w_down, const at::Tensor& w_up,
                         const at::Tensor& expert_offsets, std::string_view activation);
Activation check_adapter_backward(const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w_down,
                                  const at::Tensor& w_up, const at::Tensor& expert_offsets, const at::Tensor& h,
                                  std::string_view activation);

}  // namespace pesc
