// Tensor helpers shared by every family's host code (CPU kernels, CUDA glue, output allocation):
// the dtype tag of a tensor, the host storage types for PESC_DTYPE_SWITCH, optional tensors as
// contiguous copies or raw pointers, and the "[0] placeholder" convention for gradients that a
// backward op was not asked for (docs/design.md, "Op conventions").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

#include "core/dtype.h"
#include "core/host_device.h"
#include "core/static_switch.h"

namespace pesc {

// Storage types of the three activation dtypes in host code (PESC_DTYPE_SWITCH's TYPES).
struct HostTypes {
  using f32 = float;
  using f16 = c10::Half;
  using bf16 = c10::BFloat16;
};

// The validators have already restricted activations to these three dtypes.
inline DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::Float32;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK(false, "pesc: unsupported dtype ", t.scalar_type(), " reached a kernel");
  }
}

inline std::optional<at::Tensor> contiguous_optional(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// Typed data pointer of an optional tensor (nullptr when absent); the tensor must be contiguous.
template <typename T>
const T* optional_data(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

inline const void* optional_data_ptr(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr() : nullptr;
}

// A backward output: the gradient's shape when `needed`, else an empty [0] placeholder (the
// schema returns a tensor either way; autograd drops it).
inline at::Tensor empty_unless(bool needed, c10::SymIntArrayRef shape, const at::TensorOptions& options) {
  return needed ? at::empty_symint(shape, options) : at::empty({0}, options);
}

// Raw pointer of a backward output, nullptr for a placeholder that was not requested.
inline void* data_if(at::Tensor& t, bool needed) { return needed ? t.data_ptr() : nullptr; }

}  // namespace pesc
