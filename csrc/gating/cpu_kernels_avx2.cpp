// The CPU routing kernels (gating/cpu_kernels_impl.h) compiled for AVX2 + FMA: 8 fp32 lanes in ymm
// registers and Sleef's vectorised exp/log. cpu.cpp calls them only on CPUs that have AVX2 and FMA
// (and not when ATEN_CPU_CAPABILITY=default), so the build stays portable: no file is compiled
// with -mavx2, and nothing else in the extension uses these instructions.
//
// How that is kept true (the one-definition rule): the instruction set is switched on by a target
// pragma around the vector code only. Every header outside at::vec that the vector code needs is
// included before the pragma, so the inline functions those headers define (c10::Half conversions,
// std:: algorithms, ...) keep their baseline code even when this file emits a copy that the linker
// may pick for the whole extension. Everything defined inside the pragma lives in namespaces unique
// to this instruction set (at::vec::AVX2, pesc::AVX2) or is a template instantiated only on their
// types. Built by GCC on x86-64 only; other compilers and machines use the default kernels.
#include "gating/cpu_kernels.h"

#if PESC_ROUTER_KERNELS_AVX2

// The prelude: the non-vector headers the vector headers include, then ours.
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/TypeCast.h>
#include <c10/util/copysign.h>
#include <c10/util/irange.h>
#include <c10/util/qint32.h>
#include <c10/util/qint8.h>
#include <c10/util/quint8.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <type_traits>

#include "core/dtype.h"
#include "core/host_device.h"
#include "core/limits.h"
#include "core/static_switch.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
// GCC's C++ front end does not define the ISA macros for a target pragma (its C front end does);
// sleef.h declares its 8-lane functions only under __AVX__. Nothing else included below reads them.
#define __AVX__ 1
#define __AVX2__ 1
#define __FMA__ 1

#include "gating/cpu_kernels_impl.h"

#undef __AVX__
#undef __AVX2__
#undef __FMA__
#pragma GCC pop_options

namespace pesc {

const RouterKernels& router_kernels_avx2() { return AVX2::kRouterKernels; }

}  // namespace pesc

#endif  // PESC_ROUTER_KERNELS_AVX2
