// Runner ops of the routing launchers (gating/kernels.h). Parameters: dtype, T, E, k, normalize.
// Buffers: logits, grad_logits, balance_grad [T, E]; weights/grad_weights [T, k] fp32; indices
// [T, k] int32; routed_counts [E + 1] int32; mask [T] bool or null; grad, loss: one fp32. The
// workspaces (counts, prob_partials, token_count, lse_partials) are sized here from the launchers'
// contract and sent back as `work` buffers.
#include <cstring>

#include "gating/kernels.h"
#include "ops.h"

namespace gpusim {
namespace {

cudaError_t topk_gating(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_topk_gating(b.ptr("logits"), dtype_param(c), int_param(c, "T"), int_param(c, "E"),
                                  int_param(c, "k"), int_param(c, "normalize") != 0, b.as<float>("weights"),
                                  b.as<int32_t>("indices"), nullptr);
}

cudaError_t topk_gating_backward(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_topk_gating_backward(b.as<const float>("grad_weights"), b.ptr("logits"), dtype_param(c),
                                           b.as<const float>("weights"), b.as<const int32_t>("indices"),
                                           int_param(c, "T"), int_param(c, "E"), int_param(c, "k"),
                                           int_param(c, "normalize") != 0, b.ptr("grad_logits"), nullptr);
}

int32_t* counts_workspace(const CaseSpec& c, CaseBuffers& b) {
  return static_cast<int32_t*>(b.workspace("counts", sizeof(int32_t) * (int_param(c, "E") + 1)));
}

cudaError_t load_balancing_loss(const CaseSpec& c, CaseBuffers& b) {
  const int64_t T = int_param(c, "T"), E = int_param(c, "E");
  int32_t* counts = counts_workspace(c, b);
  auto* partials = static_cast<float*>(b.workspace("prob_partials", sizeof(float) * pesc::loss_chunks(T) * E));
  return pesc::launch_load_balancing_loss(b.ptr("logits"), dtype_param(c), b.as<const int32_t>("indices"),
                                          b.as<const bool>("mask"), T, E, int_param(c, "k"), counts, partials,
                                          b.as<float>("loss"), nullptr);
}

cudaError_t load_balancing_loss_backward(const CaseSpec& c, CaseBuffers& b) {
  int32_t* counts = counts_workspace(c, b);
  return pesc::launch_load_balancing_loss_backward(b.as<const float>("grad"), b.ptr("logits"), dtype_param(c),
                                                   b.as<const int32_t>("indices"), b.as<const bool>("mask"),
                                                   int_param(c, "T"), int_param(c, "E"), int_param(c, "k"), counts,
                                                   b.ptr("grad_logits"), nullptr);
}

cudaError_t router_z_loss(const CaseSpec& c, CaseBuffers& b) {
  const int64_t T = int_param(c, "T");
  auto* token_count = static_cast<int32_t*>(b.workspace("token_count", sizeof(int32_t)));
  auto* partials = static_cast<float*>(b.workspace("lse_partials", sizeof(float) * pesc::loss_chunks(T)));
  return pesc::launch_router_z_loss(b.ptr("logits"), dtype_param(c), b.as<const bool>("mask"), T, int_param(c, "E"),
                                    token_count, partials, b.as<float>("loss"), nullptr);
}

cudaError_t router_z_loss_backward(const CaseSpec& c, CaseBuffers& b) {
  auto* token_count = static_cast<int32_t*>(b.workspace("token_count", sizeof(int32_t)));
  return pesc::launch_router_z_loss_backward(b.as<const float>("grad"), b.ptr("logits"), dtype_param(c),
                                             b.as<const bool>("mask"), int_param(c, "T"), int_param(c, "E"),
                                             token_count, b.ptr("grad_logits"), nullptr);
}

// topk_gating_with_balancing_loss as the CUDA glue composes it (gating/cuda.cpp): top-k gating, then
// the balancing loss of the ids it wrote, whose routed-slot counts are the op's `routed_counts`
// output ([E + 1] int32).
cudaError_t topk_gating_with_balancing_loss(const CaseSpec& c, CaseBuffers& b) {
  if (const cudaError_t e = topk_gating(c, b); e != cudaSuccess) return e;
  const int64_t T = int_param(c, "T"), E = int_param(c, "E");
  auto* partials = static_cast<float*>(b.workspace("prob_partials", sizeof(float) * pesc::loss_chunks(T) * E));
  return pesc::launch_load_balancing_loss(b.ptr("logits"), dtype_param(c), b.as<const int32_t>("indices"),
                                          b.as<const bool>("mask"), T, E, int_param(c, "k"),
                                          b.as<int32_t>("routed_counts"), partials, b.as<float>("loss"), nullptr);
}

// Its backward: the gating gradient into grad_logits and the balancing gradient into balance_grad
// (the glue then adds them with at::add_, which the case does on the host).
cudaError_t topk_gating_with_balancing_loss_backward(const CaseSpec& c, CaseBuffers& b) {
  if (const cudaError_t e = topk_gating_backward(c, b); e != cudaSuccess) return e;
  return pesc::launch_load_balancing_loss_backward(b.as<const float>("grad"), b.ptr("logits"), dtype_param(c),
                                                   b.as<const int32_t>("indices"), b.as<const bool>("mask"),
                                                   int_param(c, "T"), int_param(c, "E"), int_param(c, "k"),
                                                   counts_workspace(c, b), b.ptr("balance_grad"), nullptr);
}

}  // namespace

OpFn find_gating_op(const std::string& name) {
  if (name == "topk_gating") return topk_gating;
  if (name == "topk_gating_backward") return topk_gating_backward;
  if (name == "load_balancing_loss") return load_balancing_loss;
  if (name == "load_balancing_loss_backward") return load_balancing_loss_backward;
  if (name == "router_z_loss") return router_z_loss;
  if (name == "router_z_loss_backward") return router_z_loss_backward;
  if (name == "topk_gating_with_balancing_loss") return topk_gating_with_balancing_loss;
  if (name == "topk_gating_with_balancing_loss_backward") return topk_gating_with_balancing_loss_backward;
  return nullptr;
}

}  // namespace gpusim
