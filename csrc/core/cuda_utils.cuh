// Device helpers shared by every CUDA kernel file: the device storage types for PESC_DTYPE_SWITCH, fp32 widening
// and narrowing, deterministic warp-group and block reductions, and launch-error plumbing.
//
// Launchers return cudaError_t (the first failing launch); the host entry points wrap them in
// C10_CUDA_CHECK so every launch is checked.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/host_device.h"
#include "core/static_switch.h"

#define PESC_CUDA_RETURN_IF_ERROR(expr)             \
  do {                                              \
    const cudaError_t pesc_err_ = (expr);           \
    if (pesc_err_ != cudaSuccess) return pesc_err_; \
  } while (0)

#define PESC_CUDA_LAUNCH_CHECK() PESC_CUDA_RETURN_IF_ERROR(cudaGetLastError())

namespace pesc {

// Storage types of the three activation dtypes in device code (PESC_DTYPE_SWITCH's TYPES).
struct DeviceTypes {
  using f32 = float;
  using f16 = __half;
  using bf16 = __nv_bfloat16;
};

constexpr unsigned kFullWarpMask = 0xffffffffu;

template <typename T>
__device__ __forceinline__ float to_float(T x) {
  return static_cast<float>(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Butterfly reductions over aligned groups of `width` lanes (a power of two <= 32). Every lane of
// the warp must call them. The combination tree is fixed, so results are bitwise reproducible,
// and every lane of a group ends with the same value.
__device__ __forceinline__ float group_sum(float v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullWarpMask, v, offset, width);
  return v;
}

__device__ __forceinline__ float group_max(float v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullWarpMask, v, offset, width));
  return v;
}

// Fixed-tree sum over a block of BLOCK threads (power of two); every thread must call it and
// thread 0 receives the total. `scratch` holds BLOCK floats.
template <int BLOCK>
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  scratch[threadIdx.x] = v;
  __syncthreads();
  for (int stride = BLOCK / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) scratch[threadIdx.x] += scratch[threadIdx.x + stride];
    __syncthreads();
  }
  return scratch[0];
}

}  // namespace pesc
