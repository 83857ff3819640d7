// Host entry points of every op, one pair per backend: <op>_cpu in csrc/cpu/<family>.cpp and
// <op>_cuda in csrc/cuda/<family>_host.cpp. registration.cpp binds them to the `pesc` schemas;
// semantics are in DESIGN.md section 2 and the Python docstrings in pesc_kernels/ops.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <string_view>
#include <tuple>

namespace pesc {

// ---- routing: csrc/{cpu,cuda}/gating ----
#define PESC_DECLARE_GATING_OPS(backend)                                                                   \
  std::tuple<at::Tensor, at::Tensor> topk_gating_##backend(const at::Tensor& logits, int64_t k,            \
                                                           bool normalize);                                \
  at::Tensor topk_gating_backward_##backend(const at::Tensor& grad_weights, const at::Tensor& logits,      \
                                            const at::Tensor& weights, const at::Tensor& indices,          \
                                            bool normalize);                                               \
  at::Tensor load_balancing_loss_##backend(const at::Tensor& logits, const at::Tensor& indices,            \
                                           const std::optional<at::Tensor>& mask);                         \
  at::Tensor load_balancing_loss_backward_##backend(const at::Tensor& grad, const at::Tensor& logits,      \
                                                    const at::Tensor& indices,                             \
                                                    const std::optional<at::Tensor>& mask);                \
  at::Tensor router_z_loss_##backend(const at::Tensor& logits, const std::optional<at::Tensor>& mask);     \
  at::Tensor router_z_loss_backward_##backend(const at::Tensor& grad, const at::Tensor& logits,            \
                                              const std::optional<at::Tensor>& mask);

PESC_DECLARE_GATING_OPS(cpu)
#if PESC_WITH_CUDA
PESC_DECLARE_GATING_OPS(cuda)
#endif

// ---- permutation: csrc/{cpu,cuda}/permute ----
#define PESC_DECLARE_PERMUTE_OPS(backend)                                                                         \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> permute_##backend(const at::Tensor& x, const at::Tensor& indices, \
                                                                   int64_t num_experts);                          \
  at::Tensor unpermute_##backend(const at::Tensor& y_perm, const at::Tensor& row_map,                             \
                                 const std::optional<at::Tensor>& weights,                                        \
                                 const std::optional<at::Tensor>& residual);                                      \
  std::tuple<at::Tensor, at::Tensor> unpermute_backward_##backend(                                                \
      const at::Tensor& grad_y, const at::Tensor& row_map, const std::optional<at::Tensor>& weights,              \
      const std::optional<at::Tensor>& y_perm);

PESC_DECLARE_PERMUTE_OPS(cpu)
#if PESC_WITH_CUDA
PESC_DECLARE_PERMUTE_OPS(cuda)
#endif

// ---- grouped GEMMs on expert segments: csrc/cpu/adapter.cpp, csrc/cuda/adapter_host.cpp ----
// adapter returns (y, h) with h = x @ w_down the pre-activation, which autograd saves for the
// backward. A backward output whose output_mask entry is false is returned as an empty [0] tensor.
#define PESC_DECLARE_ADAPTER_OPS(backend)                                                                  \
  at::Tensor grouped_mm_##backend(const at::Tensor& x, const at::Tensor& w, const at::Tensor& expert_offsets); \
  std::tuple<at::Tensor, at::Tensor> grouped_mm_backward_##backend(                                        \
      const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w, const at::Tensor& expert_offsets,  \
      std::array<bool, 2> output_mask);                                                                    \
  std::tuple<at::Tensor, at::Tensor> adapter_##backend(const at::Tensor& x, const at::Tensor& w_down,       \
                                                       const at::Tensor& w_up, const at::Tensor& expert_offsets, \
                                                       std::string_view activation, double scaling);       \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_backward_##backend(                               \
      const at::Tensor& grad_y, const at::Tensor& x, const at::Tensor& w_down, const at::Tensor& w_up,      \
      const at::Tensor& expert_offsets, const at::Tensor& h, std::string_view activation, double scaling,   \
      std::array<bool, 3> output_mask);

PESC_DECLARE_ADAPTER_OPS(cpu)
#if PESC_WITH_CUDA
PESC_DECLARE_ADAPTER_OPS(cuda)
#endif

}  // namespace pesc
