// CUDA entry points of grouped_mm, adapter and gated_activation (and their backwards): validate and
// allocate the outputs (adapter/ops.h), make inputs contiguous, allocate workspaces through the
// caching allocator, build the device-side segment map from expert_offsets, and call the launchers
// of adapter/kernels.h on the current stream under a device guard. Nothing here reads device
// memory, so there is no host sync; the offsets' values are therefore not validated on CUDA but
// clamped (adapter/segment_gemm.h), and rows past the clamped offsets[E] are written as zeros.
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <torch/library.h>

#include "adapter/kernels.h"
#include "adapter/ops.h"
#include "core/cuda_host.h"

namespace pesc {
namespace {

// Owns the segment map's workspace for the duration of an op.
struct Segments {
  at::Tensor workspace;
  SegmentLaunch launch;
};

Segments build_segments(const at::Tensor& expert_offsets_in, const at::Tensor& x) {
  const at::Tensor offsets = expert_offsets_in.contiguous();
  const int E = static_cast<int>(offsets.size(0) - 1);
  const int64_t N = x.size(0);
  Segments s;
  s.workspace = at::empty({segment_map_workspace(E)}, offsets.options());
  C10_CUDA_CHECK(
      launch_segment_map(offsets.data_ptr<int64_t>(), E, N, s.workspace.data_ptr<int64_t>(), current_stream()));
  // TF32 for fp32 products follows torch.backends.cuda.matmul.allow_tf32, as torch.matmul does.
  s.launch = {segment_map_view(s.workspace.data_ptr<int64_t>(), E, N), dtype_of(x),
              at::globalContext().allowTF32CuBLAS(), current_stream()};
  return s;
}

at::Tensor grouped_mm_cuda(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& expert_offsets,
                           const std::optional<at::Tensor>& bias_in, bool w_transposed) {
  at::Tensor y = grouped_mm_outputs(x_in, w_in, expert_offsets, bias_in, w_transposed);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const auto bias = contiguous_optional(bias_in);
  const Segments segments = build_segments(expert_offsets, x);
  C10_CUDA_CHECK(launch_grouped_linear(x.data_ptr(), w.data_ptr(), optional_data_ptr(bias), y.data_ptr(), x.size(1),
                                       y.size(1), w_transposed, segments.launch));
  return y;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> grouped_mm_backward_cuda(const at::Tensor& grad_y_in,
                                                                        const at::Tensor& x_in, const at::Tensor& w_in,
                                                                        const at::Tensor& expert_offsets,
                                                                        bool w_transposed,
                                                                        std::array<bool, 3> output_mask) {
  auto [grad_x, grad_w, grad_bias] =
      grouped_mm_backward_outputs(grad_y_in, x_in, w_in, expert_offsets, w_transposed, output_mask);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const Segments segments = build_segments(expert_offsets, x);
  C10_CUDA_CHECK(launch_grouped_linear_backward(
      grad_y.data_ptr(), x.data_ptr(), w.data_ptr(), data_if(grad_x, output_mask[0]), data_if(grad_w, output_mask[1]),
      data_if(grad_bias, output_mask[2]), x.size(1), grad_y.size(1), w_transposed, segments.launch));
  return {grad_x, grad_w, grad_bias};
}

std::tuple<at::Tensor, at::Tensor> adapter_cuda(const at::Tensor& x_in, const at::Tensor& w_down_in,
                                                const at::Tensor& w_up_in, const at::Tensor& expert_offsets,
                                                std::string_view activation, double scaling) {
  auto [y, h] = adapter_outputs(x_in, w_down_in, w_up_in, expert_offsets, activation, scaling);
  const Activation act = parse_activation("pesc.adapter", activation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w_down = w_down_in.contiguous(), w_up = w_up_in.contiguous();
  const int64_t N = x.size(0), d = x.size(1), r = w_down.size(2);
  at::Tensor activation_buffer = adapter_forward_is_fused(r) ? at::Tensor() : at::empty({N, r}, x.options());
  const Segments segments = build_segments(expert_offsets, x);
  C10_CUDA_CHECK(launch_adapter(x.data_ptr(), w_down.data_ptr(), w_up.data_ptr(), y.data_ptr(), h.data_ptr(),
                                activation_buffer.defined() ? activation_buffer.data_ptr() : nullptr, d, r, act,
                                static_cast<float>(scaling), segments.launch));
  C10_CUDA_CHECK(launch_zero_dropped_rows(y.data_ptr(), d, segments.launch));
  C10_CUDA_CHECK(launch_zero_dropped_rows(h.data_ptr(), r, segments.launch));
  return {y, h};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adapter_backward_cuda(
    const at::Tensor& grad_y_in, const at::Tensor& x_in, const at::Tensor& w_down_in, const at::Tensor& w_up_in,
    const at::Tensor& expert_offsets, const at::Tensor& h_in, std::string_view activation, double scaling,
    std::array<bool, 3> output_mask) {
  auto [grad_x, grad_down, grad_up] = adapter_backward_outputs(grad_y_in, x_in, w_down_in, w_up_in, expert_offsets,
                                                               h_in, activation, scaling, output_mask);
  const Activation act = parse_activation("pesc.adapter_backward", activation);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), h = h_in.contiguous();
  const at::Tensor w_down = w_down_in.contiguous(), w_up = w_up_in.contiguous();
  const auto [need_x, need_down, need_up] = output_mask;
  at::Tensor dh = need_x || need_down ? at::empty_like(h) : at::Tensor();
  const Segments segments = build_segments(expert_offsets, x);
  C10_CUDA_CHECK(launch_adapter_backward(grad_y.data_ptr(), x.data_ptr(), w_down.data_ptr(), w_up.data_ptr(),
                                         h.data_ptr(), data_if(dh, need_x || need_down), data_if(grad_x, need_x),
                                         data_if(grad_down, need_down), data_if(grad_up, need_up), x.size(1),
                                         w_down.size(2), act, static_cast<float>(scaling), segments.launch));
  if (need_x) C10_CUDA_CHECK(launch_zero_dropped_rows(grad_x.data_ptr(), x.size(1), segments.launch));
  return {grad_x, grad_down, grad_up};
}

at::Tensor gated_activation_cuda(const at::Tensor& h_in, std::string_view activation, bool interleaved, double limit,
                                 double alpha) {
  at::Tensor a = gated_activation_outputs(h_in, activation, interleaved, limit, alpha);
  const GatedKind kind = parse_gated_kind("pesc.gated_activation", activation, limit, alpha);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous();
  C10_CUDA_CHECK(launch_gated_activation(h.data_ptr(), a.data_ptr(), h.size(0), a.size(1), interleaved, kind,
                                         dtype_of(h), current_stream()));
  return a;
}

at::Tensor gated_activation_backward_cuda(const at::Tensor& grad_a_in, const at::Tensor& h_in,
                                          std::string_view activation, bool interleaved, double limit, double alpha) {
  at::Tensor grad_h = gated_activation_backward_outputs(grad_a_in, h_in, activation, interleaved, limit, alpha);
  const GatedKind kind = parse_gated_kind("pesc.gated_activation_backward", activation, limit, alpha);
  const c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor grad_a = grad_a_in.contiguous(), h = h_in.contiguous();
  C10_CUDA_CHECK(launch_gated_activation_backward(grad_a.data_ptr(), h.data_ptr(), grad_h.data_ptr(), h.size(0),
                                                  grad_a.size(1), interleaved, kind, dtype_of(h), current_stream()));
  return grad_h;
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CUDA, m) {
  m.impl("grouped_mm", &pesc::grouped_mm_cuda);
  m.impl("grouped_mm_backward", &pesc::grouped_mm_backward_cuda);
  m.impl("adapter", &pesc::adapter_cuda);
  m.impl("adapter_backward", &pesc::adapter_backward_cuda);
  m.impl("gated_activation", &pesc::gated_activation_cuda);
  m.impl("gated_activation_backward", &pesc::gated_activation_backward_cuda);
}
