// Host-side glue for the CUDA entry points (compiled by the C++ compiler, never by nvcc):
// tensor dtype to pesc::DType, the current stream, and typed data pointers.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "core/dtype.h"

namespace pesc {

inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "pesc: unsupported dtype ", t.scalar_type(), " reached a CUDA kernel");
  }
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

// Optional tensor to raw pointer (nullptr when absent); the tensor must already be contiguous.
template <typename T>
const T* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

}  // namespace pesc
