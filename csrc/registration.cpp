// The only file that registers ops: schemas under the `pesc` namespace (TORCH_LIBRARY) and the CPU
// and CUDA kernels behind them (TORCH_LIBRARY_IMPL). Fake (meta) implementations and autograd
// formulas are registered from Python in pesc_kernels/ops.py, which set_python_module names so
// torch imports it whenever it needs them (torch.compile, opcheck).
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(pesc, m) {
  // Routing (DESIGN.md 2.1).
  m.def("topk_gating(Tensor logits, int k, bool normalize=True) -> (Tensor weights, Tensor indices)");
  m.def("topk_gating_backward(Tensor grad_weights, Tensor logits, Tensor weights, Tensor indices, bool normalize)"
        " -> Tensor");
  m.def("load_balancing_loss(Tensor logits, Tensor indices, Tensor? mask=None) -> Tensor");
  m.def("load_balancing_loss_backward(Tensor grad, Tensor logits, Tensor indices, Tensor? mask) -> Tensor");
  m.def("router_z_loss(Tensor logits, Tensor? mask=None) -> Tensor");
  m.def("router_z_loss_backward(Tensor grad, Tensor logits, Tensor? mask) -> Tensor");
  // Permutation (DESIGN.md 2.2). permute's backward is unpermute with no weights or residual.
  m.def("permute(Tensor x, Tensor indices, int num_experts)"
        " -> (Tensor x_perm, Tensor row_map, Tensor expert_offsets)");
  m.def("unpermute(Tensor y_perm, Tensor row_map, Tensor? weights=None, Tensor? residual=None) -> Tensor");
  m.def("unpermute_backward(Tensor grad_y, Tensor row_map, Tensor? weights, Tensor? y_perm)"
        " -> (Tensor grad_y_perm, Tensor grad_weights)");
  // Grouped GEMMs on expert segments (DESIGN.md 2.3). adapter also returns the pre-activation
  // h = x @ w_down [N, r] that its backward reads (the Python wrapper returns y only).
  m.def("grouped_mm(Tensor x, Tensor w, Tensor expert_offsets) -> Tensor");
  m.def("grouped_mm_backward(Tensor grad_y, Tensor x, Tensor w, Tensor expert_offsets, bool[2] output_mask)"
        " -> (Tensor grad_x, Tensor grad_w)");
  m.def("adapter(Tensor x, Tensor w_down, Tensor w_up, Tensor expert_offsets, str activation=\"gelu\","
        " float scaling=1.0) -> (Tensor y, Tensor h)");
  m.def("adapter_backward(Tensor grad_y, Tensor x, Tensor w_down, Tensor w_up, Tensor expert_offsets, Tensor h,"
        " str activation, float scaling, bool[3] output_mask) -> (Tensor grad_x, Tensor grad_w_down, Tensor grad_w_up)");
}

#define PESC_IMPL_GATING_OPS(m, backend)                                            \
  m.impl("topk_gating", &pesc::topk_gating_##backend);                             \
  m.impl("topk_gating_backward", &pesc::topk_gating_backward_##backend);           \
  m.impl("load_balancing_loss", &pesc::load_balancing_loss_##backend);             \
  m.impl("load_balancing_loss_backward", &pesc::load_balancing_loss_backward_##backend); \
  m.impl("router_z_loss", &pesc::router_z_loss_##backend);                         \
  m.impl("router_z_loss_backward", &pesc::router_z_loss_backward_##backend);

#define PESC_IMPL_PERMUTE_OPS(m, backend)                          \
  m.impl("permute", &pesc::permute_##backend);                     \
  m.impl("unpermute", &pesc::unpermute_##backend);                 \
  m.impl("unpermute_backward", &pesc::unpermute_backward_##backend);

#define PESC_IMPL_ADAPTER_OPS(m, backend)                                           \
  m.impl("grouped_mm", &pesc::grouped_mm_##backend);                               \
  m.impl("grouped_mm_backward", &pesc::grouped_mm_backward_##backend);             \
  m.impl("adapter", &pesc::adapter_##backend);                                     \
  m.impl("adapter_backward", &pesc::adapter_backward_##backend);

TORCH_LIBRARY_IMPL(pesc, CPU, m) {
  PESC_IMPL_GATING_OPS(m, cpu)
  PESC_IMPL_PERMUTE_OPS(m, cpu)
  PESC_IMPL_ADAPTER_OPS(m, cpu)
}

#if PESC_WITH_CUDA
TORCH_LIBRARY_IMPL(pesc, CUDA, m) {
  PESC_IMPL_GATING_OPS(m, cuda)
  PESC_IMPL_PERMUTE_OPS(m, cuda)
  PESC_IMPL_ADAPTER_OPS(m, cuda)
}
#endif
