// Portability macro for per-element math shared by the CPU and CUDA backends.
//
// Functions marked PESC_HD compile as __host__ __device__ under nvcc and as plain inline C++
// under the host compiler, so the CPU kernels execute exactly the math the GPU kernels run and
// the CPU test suite covers it.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define PESC_HD __host__ __device__ __forceinline__
#else
#define PESC_HD inline
#endif

namespace pesc {

// x != x instead of std::isnan: valid in host and device code alike, and exact without fast-math.
PESC_HD bool is_nan(float x) { return x != x; }

PESC_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace pesc
