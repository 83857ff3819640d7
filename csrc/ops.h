// Host entry points of every op, one pair per backend: <op>_cpu in csrc/cpu/<family>.cpp and
// <op>_cuda in csrc/cuda/<family>_host.cpp. registration.cpp binds them to the `pesc` schemas;
// semantics are in DESIGN.md section 2 and the Python docstrings in pesc_kernels/ops.py.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
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

}  // namespace pesc
