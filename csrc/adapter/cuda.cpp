// CUDA entry points of grouped_mm and adapter (and their backwards): validate and allocate the
// outputs (adapter/ops.h), make inputs contiguous, allocate workspaces through the caching allocator, build the
// device-side segment map from expert_offsets, and call adapter.cu's launchers on the current
// stream under a device guard. Nothing here reads device memory, so there is no host sync; the
// offsets' values are therefore not validated on CUDA but clamped (adapter/segment_gemm.h).
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

at::Tensor grouped_mm_cuda(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& expert_offsets) {
  at::Tensor y = grouped_mm_outputs(x_in, w_in, expert_offsets);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const Segments segments = build_segments(expert_offsets, x);
  C10_CUDA_CHECK(launch_grouped_mm(x.data_ptr(), w.data_ptr(), y.data_ptr(), x.size(1), w.size(2), segments.launch));
  return y;
}

std::tuple<at::Tensor, at::Tensor> grouped_mm_backward_cuda(const at::Tensor& grad_y_in, const at::Tensor& x_in,
                                                            const at::Tensor& w_in, const at::Tensor& expert_offsets,
                                                            std::array<bool, 2> output_mask) {
  auto [grad_x, grad_w] = grouped_mm_backward_outputs(grad_y_in, x_in, w_in, expert_offsets, output_mask);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor grad_y = grad_y_in.contiguous(), x = x_in.contiguous(), w = w_in.contiguous();
  const Segments segments = build_segments(expert_offsets, x);
  C10_CUDA_CHECK(launch_grouped_mm_backward(grad_y.data_ptr(), x.data_ptr(), w.data_ptr(),
                                            data_if(grad_x, output_mask[0]), data_if(grad_w, output_mask[1]), x.size(1),
                                            w.size(2), segments.launch));
  return {grad_x, grad_w};
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
  return {grad_x, grad_down, grad_up};
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CUDA, m) {
  m.impl("grouped_mm", &pesc::grouped_mm_cuda);
  m.impl("grouped_mm_backward", &pesc::grouped_mm_backward_cuda);
  m.impl("adapter", &pesc::adapter_cuda);
  m.impl("adapter_backward", &pesc::adapter_backward_cuda);
}
