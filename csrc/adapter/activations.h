// Adapter activations and their derivatives, shared by the CPU and CUDA adapter kernels (host and
// device), all in fp32:
//   gelu       0.5 x (1 + erf(x / sqrt 2))                       (exact, as PESC uses)
//   gelu_tanh  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
//   silu       x * sigmoid(x)
//   relu       max(x, 0)  (as torch: NaN stays NaN and passes the gradient; derivative 0 at x = 0)
//   identity   x
// The op schemas pass the activation as a string; parse_activation (adapter/ops.cpp)
// turns it into this enum, the one place names map to behaviour.
#pragma once

#include <type_traits>

#include "core/host_device.h"

namespace pesc {

enum class Activation : int { Gelu = 0, GeluTanh = 1, Silu = 2, Relu = 3, Identity = 4 };

constexpr int kNumActivations = 5;
// Indexed by the enum value; the Python wrapper's ACTIVATIONS tuple lists the same names.
constexpr const char* kActivationNames[kNumActivations] = {"gelu", "gelu_tanh", "silu", "relu", "identity"};

namespace act_detail {
constexpr float kInvSqrt2 = 0.70710678118654752440f;
constexpr float kInvSqrt2Pi = 0.39894228040143267794f;  // 1 / sqrt(2 pi): the standard normal density at 0
constexpr float kSqrt2OverPi = 0.79788456080286535588f;
constexpr float kGeluTanhCubic = 0.044715f;

PESC_HD float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }
}  // namespace act_detail

// The math of each activation, one specialisation per kind, so a loop over elements can fix the kind
// at compile time (kernels over [rows, r] blocks then carry no per-element switch and can vectorise).
template <Activation A>
PESC_HD float activation_forward(float x) {
  using namespace act_detail;
  if constexpr (A == Activation::Gelu) {
    return 0.5f * x * (1.f + erff(x * kInvSqrt2));
  } else if constexpr (A == Activation::GeluTanh) {
    return 0.5f * x * (1.f + tanhf(kSqrt2OverPi * (x + kGeluTanhCubic * x * x * x)));
  } else if constexpr (A == Activation::Silu) {
    return x * sigmoid(x);
  } else if constexpr (A == Activation::Relu) {
    return (x > 0.f || is_nan(x)) ? x : 0.f;
  } else {
    return x;
  }
}

// d act / dx at x.
template <Activation A>
PESC_HD float activation_derivative(float x) {
  using namespace act_detail;
  if constexpr (A == Activation::Gelu) {
    return 0.5f * (1.f + erff(x * kInvSqrt2)) + x * kInvSqrt2Pi * expf(-0.5f * x * x);
  } else if constexpr (A == Activation::GeluTanh) {
    const float t = tanhf(kSqrt2OverPi * (x + kGeluTanhCubic * x * x * x));
    const float du = kSqrt2OverPi * (1.f + 3.f * kGeluTanhCubic * x * x);
    return 0.5f * (1.f + t) + 0.5f * x * (1.f - t * t) * du;
  } else if constexpr (A == Activation::Silu) {
    const float s = sigmoid(x);
    return s * (1.f + x * (1.f - s));
  } else if constexpr (A == Activation::Relu) {
    return (x > 0.f || is_nan(x)) ? 1.f : 0.f;
  } else {
    return 1.f;
  }
}

// Calls fn(std::integral_constant<Activation, A>{}) for the runtime kind `act`.
template <typename Fn>
PESC_HD decltype(auto) with_activation(Activation act, Fn&& fn) {
  switch (act) {
    case Activation::Gelu: return fn(std::integral_constant<Activation, Activation::Gelu>{});
    case Activation::GeluTanh: return fn(std::integral_constant<Activation, Activation::GeluTanh>{});
    case Activation::Silu: return fn(std::integral_constant<Activation, Activation::Silu>{});
    case Activation::Relu: return fn(std::integral_constant<Activation, Activation::Relu>{});
    case Activation::Identity: break;
  }
  return fn(std::integral_constant<Activation, Activation::Identity>{});
}

// The same with the kind chosen at run time (the CUDA kernels, where the branch is uniform).
PESC_HD float activation_forward(Activation act, float x) {
  return with_activation(act, [x](auto kind) { return activation_forward<decltype(kind)::value>(x); });
}

PESC_HD float activation_derivative(Activation act, float x) {
  return with_activation(act, [x](auto kind) { return activation_derivative<decltype(kind)::value>(x); });
}

}  // namespace pesc
