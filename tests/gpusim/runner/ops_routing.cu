// Runner ops of the grouped top-k routing launchers (routing/kernels.h). Parameters: dtype, T, E, k,
// num_groups, topk_groups, score (pesc::RouterScore), normalize, scaling (float). Buffers: logits
// [T, E] and grad_logits [T, E] in the op's dtype; bias [E] fp32 or null; weights/grad_weights
// [T, k] fp32; indices [T, k] int32. The backward gets num_groups = topk_groups = 1, as the CUDA
// glue passes (the groups only shape the selection, which the backward reads from `indices`).
#include "ops.h"
#include "routing/kernels.h"

namespace gpusim {
namespace {

pesc::GroupedTopkParams routing_params(const CaseSpec& c) {
  return {static_cast<int>(int_param(c, "E")),
          static_cast<int>(int_param(c, "k")),
          static_cast<int>(int_param(c, "num_groups")),
          static_cast<int>(int_param(c, "topk_groups")),
          static_cast<pesc::RouterScore>(int_param(c, "score")),
          int_param(c, "normalize") != 0,
          float_param(c, "scaling")};
}

cudaError_t grouped_topk_gating(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_grouped_topk_gating(b.ptr("logits"), dtype_param(c), b.as<const float>("bias"), int_param(c, "T"),
                                          routing_params(c), b.as<float>("weights"), b.as<int32_t>("indices"), nullptr);
}

cudaError_t grouped_topk_gating_backward(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_grouped_topk_gating_backward(b.as<const float>("grad_weights"), b.ptr("logits"), dtype_param(c),
                                                   b.as<const int32_t>("indices"), int_param(c, "T"), routing_params(c),
                                                   b.ptr("grad_logits"), nullptr);
}

}  // namespace

OpFn find_routing_op(const std::string& name) {
  if (name == "grouped_topk_gating") return grouped_topk_gating;
  if (name == "grouped_topk_gating_backward") return grouped_topk_gating_backward;
  return nullptr;
}

}  // namespace gpusim
