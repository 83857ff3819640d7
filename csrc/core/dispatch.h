// Host-side dtype dispatch over the three activation dtypes every op accepts (fp32, fp16, bf16).
// Binds `scalar_t` to float, c10::Half or c10::BFloat16. (CUDA code uses its own switch over
// pesc::DType in cuda/cuda_utils.cuh, so .cu files never include ATen.)
#pragma once

#include <ATen/Dispatch.h>

#define PESC_DISPATCH_FLOAT_TYPES(TYPE, NAME, ...)              \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                \
                     AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)   \
                     AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))
