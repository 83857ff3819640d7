// Runner ops of the segmented-GEMM launchers (adapter/kernels.h, adapter/segment_gemm.h) and of
// the gated activations. Every segmented op first builds the segment map from the `offsets` buffer
// ([E+1] int64) with launch_segment_map into a `segment_map` work buffer (sent back, so the clamping
// of bad offsets is checked too). Parameters: dtype, E, N, allow_tf32, and per op K/M or d/r, act
// (pesc::Activation), scaling (float), w_transposed, cols; gated ops: dtype, N, F, act, clamped,
// interleaved, limit and alpha (floats). Row-major buffers in the op's dtype: x [N, K|d], w [E, K,
// M] (or [E, M, K] when w_transposed), bias/grad_bias [E, M], w_down [E, d, r], w_up [E, r, d], y
// [N, M|d], out [N, cols], h and the [N, r] buffers, gated h/grad_h [N, 2F] and a/grad_a [N, F];
// absent optional buffers are null.
#include "adapter/kernels.h"
#include "adapter/segment_gemm.h"
#include "ops.h"

namespace gpusim {
namespace {

// The SegmentLaunch of the case, or the error of launch_segment_map.
cudaError_t segments(const CaseSpec& c, CaseBuffers& b, pesc::SegmentLaunch& launch) {
  const int E = static_cast<int>(int_param(c, "E"));
  const int64_t N = int_param(c, "N");
  auto* workspace = static_cast<int64_t*>(b.workspace("segment_map", sizeof(int64_t) * pesc::segment_map_workspace(E)));
  const cudaError_t e = pesc::launch_segment_map(b.as<const int64_t>("offsets"), E, N, workspace, nullptr);
  launch = {pesc::segment_map_view(workspace, E, N), dtype_param(c), int_param(c, "allow_tf32") != 0, nullptr};
  return e;
}

pesc::Activation act_param(const CaseSpec& c) { return static_cast<pesc::Activation>(int_param(c, "act")); }

cudaError_t segment_map(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  return segments(c, b, launch);
}

cudaError_t grouped_mm(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  return pesc::launch_grouped_mm(b.ptr("x"), b.ptr("w"), b.ptr("y"), int_param(c, "K"), int_param(c, "M"), launch);
}

cudaError_t grouped_mm_backward(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  return pesc::launch_grouped_mm_backward(b.ptr("grad_y"), b.ptr("x"), b.ptr("w"), b.ptr("grad_x"), b.ptr("grad_w"),
                                          int_param(c, "K"), int_param(c, "M"), launch);
}

cudaError_t adapter(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  const int64_t d = int_param(c, "d"), r = int_param(c, "r");
  if (const cudaError_t e =
          pesc::launch_adapter(b.ptr("x"), b.ptr("w_down"), b.ptr("w_up"), b.ptr("y"), b.ptr("h"),
                               b.ptr("activation_buffer"), d, r, act_param(c), float_param(c, "scaling"), launch);
      e != cudaSuccess)
    return e;
  // as the CUDA glue does (adapter/cuda.cpp): rows past the clamped offsets[E] become zeros
  if (const cudaError_t e = pesc::launch_zero_dropped_rows(b.ptr("y"), d, launch); e != cudaSuccess) return e;
  return pesc::launch_zero_dropped_rows(b.ptr("h"), r, launch);
}

cudaError_t adapter_backward(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  if (const cudaError_t e = pesc::launch_adapter_backward(
          b.ptr("grad_y"), b.ptr("x"), b.ptr("w_down"), b.ptr("w_up"), b.ptr("h"), b.ptr("dh_buffer"), b.ptr("grad_x"),
          b.ptr("grad_w_down"), b.ptr("grad_w_up"), int_param(c, "d"), int_param(c, "r"), act_param(c),
          float_param(c, "scaling"), launch);
      e != cudaSuccess)
    return e;
  // as the CUDA glue does: grad_x rows past the clamped offsets[E] become zeros
  if (b.ptr("grad_x") == nullptr) return cudaSuccess;
  return pesc::launch_zero_dropped_rows(b.ptr("grad_x"), int_param(c, "d"), launch);
}

cudaError_t grouped_linear(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  return pesc::launch_grouped_linear(b.ptr("x"), b.ptr("w"), b.ptr("bias"), b.ptr("y"), int_param(c, "K"),
                                     int_param(c, "M"), int_param(c, "w_transposed") != 0, launch);
}

cudaError_t grouped_linear_backward(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  return pesc::launch_grouped_linear_backward(b.ptr("grad_y"), b.ptr("x"), b.ptr("w"), b.ptr("grad_x"), b.ptr("grad_w"),
                                              b.ptr("grad_bias"), int_param(c, "K"), int_param(c, "M"),
                                              int_param(c, "w_transposed") != 0, launch);
}

cudaError_t zero_dropped_rows(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  return pesc::launch_zero_dropped_rows(b.ptr("out"), int_param(c, "cols"), launch);
}

pesc::GatedKind gated_kind(const CaseSpec& c) {
  return {act_param(c), int_param(c, "clamped") != 0, float_param(c, "limit"), float_param(c, "alpha")};
}

cudaError_t gated_activation(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_gated_activation(b.ptr("h"), b.ptr("a"), int_param(c, "N"), int_param(c, "F"),
                                       int_param(c, "interleaved") != 0, gated_kind(c), dtype_param(c), nullptr);
}

cudaError_t gated_activation_backward(const CaseSpec& c, CaseBuffers& b) {
  return pesc::launch_gated_activation_backward(b.ptr("grad_a"), b.ptr("h"), b.ptr("grad_h"), int_param(c, "N"),
                                                int_param(c, "F"), int_param(c, "interleaved") != 0, gated_kind(c),
                                                dtype_param(c), nullptr);
}

// launch_segment_gemm itself: every (b_transposed, epilogue) combination, including those no op uses.
cudaError_t segment_gemm(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  const pesc::SegmentGemm g{b.ptr("a"),
                            b.ptr("b"),
                            b.ptr("c"),
                            b.ptr("aux_in"),
                            b.ptr("aux_out"),
                            int_param(c, "K"),
                            int_param(c, "M"),
                            int_param(c, "b_transposed") != 0,
                            static_cast<pesc::GemmEpilogue>(int_param(c, "epilogue")),
                            act_param(c),
                            float_param(c, "scaling")};
  return pesc::launch_segment_gemm(g, launch);
}

cudaError_t segment_weight_grad(const CaseSpec& c, CaseBuffers& b) {
  pesc::SegmentLaunch launch;
  if (const cudaError_t e = segments(c, b, launch); e != cudaSuccess) return e;
  const pesc::SegmentWeightGrad g{b.ptr("a"),        b.ptr("b"),
                                  b.ptr("c"),        int_param(c, "K"),
                                  int_param(c, "M"), int_param(c, "activate_a") != 0,
                                  act_param(c),      float_param(c, "scaling")};
  return pesc::launch_segment_weight_grad(g, launch);
}

}  // namespace

OpFn find_adapter_op(const std::string& name) {
  if (name == "segment_map") return segment_map;
  if (name == "grouped_mm") return grouped_mm;
  if (name == "grouped_mm_backward") return grouped_mm_backward;
  if (name == "adapter") return adapter;
  if (name == "adapter_backward") return adapter_backward;
  if (name == "segment_gemm") return segment_gemm;
  if (name == "segment_weight_grad") return segment_weight_grad;
  if (name == "grouped_linear") return grouped_linear;
  if (name == "grouped_linear_backward") return grouped_linear_backward;
  if (name == "zero_dropped_rows") return zero_dropped_rows;
  if (name == "gated_activation") return gated_activation;
  if (name == "gated_activation_backward") return gated_activation_backward;
  return nullptr;
}

}  // namespace gpusim
