// Gated activations of a gate/up GEMM output, shared by the CPU and CUDA kernels (host and device),
// all in fp32 (docs/design.md, "Grouped GEMMs"). h [N, 2F] holds a gate g and an up value u per
// output column f:
//   concatenated  g = h[:, f],       u = h[:, F + f]      (Mixtral, Qwen, OLMoE, DeepSeek: gate rows first)
//   interleaved   g = h[:, 2 f],     u = h[:, 2 f + 1]    (GPT-OSS)
// and the output a [N, F] is
//   <activation>     a = act(g) * u for every adapter activation of activations.h:
//                    silu (SwiGLU), gelu (GeGLU), gelu_tanh, relu (ReGLU), identity (bilinear)
//   clamped_swiglu   a = (clamp(u, -limit, limit) + 1) * g' * sigmoid(alpha * g'),  g' = min(g, limit)
//                    (GPT-OSS; HF's default limit 7, alpha 1.702)
// Backward, for an upstream gradient ga of a:
//   act(g) * u:      dg = ga * u * act'(g),  du = ga * act(g)
//   clamped_swiglu:  dg = ga * (u' + 1) * (s + alpha g' s (1 - s)) where g < limit, else 0   (s = sigmoid(alpha g'))
//                    du = ga * g' s where -limit < u < limit, else 0
// The clamps pass NaN through; their gradient is zero at and beyond the bounds and for NaN, as
// torch.clamp's backward gives it.
// The sigmoid of SwiGLU and of the clamped SwiGLU uses exp_poly, an expf without calls or branches
// (within 2 ulp of expf over the range used), so CPU loops over a row vectorise; gelu and
// gelu_tanh gates use the activations.h functions (erff, tanhf).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "adapter/activations.h"
#include "core/host_device.h"

namespace pesc {

// What a gated_activation op computes: act(g) * u, or GPT-OSS's clamped SwiGLU (`clamped`, which
// ignores `act`).
struct GatedKind {
  Activation act;
  bool clamped;
  float limit;  // clamped only
  float alpha;  // clamped only
};

// The extra name gated_activation accepts besides the adapter activations.
constexpr const char* kClampedSwigluName = "clamped_swiglu";

// Column of the gate and of the up value of output column f (of F) in a row of h.
PESC_HD int64_t gate_column(int64_t f, int64_t F, bool interleaved) { return interleaved ? 2 * f : f; }
PESC_HD int64_t up_column(int64_t f, int64_t F, bool interleaved) { return interleaved ? 2 * f + 1 : F + f; }

namespace gated_detail {
// min(x, hi) and clamp(x, lo, hi) that keep NaN, as torch.clamp does.
PESC_HD float clamp_max(float x, float hi) { return x > hi ? hi : x; }
PESC_HD float clamp_range(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

PESC_HD float float_from_bits(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
#endif
}

// exp(x): x = n ln2 + r with |r| <= ln2 / 2 (n rounded by the 1.5 * 2^23 trick, r in two steps),
// exp(r) by Cephes' degree-6 polynomial, 2^n from the exponent bits. x is clamped to [-87.3, 88]
// (results 1.2e-38 .. 1.7e38); NaN stays NaN. Arithmetic and selects only, so it vectorises.
PESC_HD float exp_poly(float x) {
  x = x > 88.f ? 88.f : (x < -87.33654f ? -87.33654f : x);
  constexpr float kRound = 12582912.f;
  const float n = (x * 1.44269504088896341f + kRound) - kRound;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const float whole = n == n ? n : 0.f;  // NaN: p is NaN already
  return p * float_from_bits((static_cast<int32_t>(whole) + 127) << 23);
}

PESC_HD float sigmoid_poly(float x) { return 1.f / (1.f + exp_poly(-x)); }

// act(g) of the gate, with the vectorisable sigmoid for silu.
template <Activation A>
PESC_HD float gate_forward(float g) {
  if constexpr (A == Activation::Silu) {
    return g * sigmoid_poly(g);
  } else {
    return activation_forward<A>(g);
  }
}

template <Activation A>
PESC_HD float gate_derivative(float g) {
  if constexpr (A == Activation::Silu) {
    const float s = sigmoid_poly(g);
    return s * (1.f + g * (1.f - s));
  } else {
    return activation_derivative<A>(g);
  }
}
}  // namespace gated_detail

PESC_HD float clamped_swiglu_forward(float g, float u, float limit, float alpha) {
  using namespace gated_detail;
  const float gc = clamp_max(g, limit);
  return (clamp_range(u, -limit, limit) + 1.f) * gc * sigmoid_poly(alpha * gc);
}

template <Activation A>
PESC_HD float gated_forward(float g, float u) {
  return gated_detail::gate_forward<A>(g) * u;
}

// (dg, du) for upstream ga.
struct GatedGrad {
  float dg;
  float du;
};

PESC_HD GatedGrad clamped_swiglu_backward(float g, float u, float ga, float limit, float alpha) {
  using namespace gated_detail;
  const float gc = clamp_max(g, limit);
  const float s = sigmoid_poly(alpha * gc);
  const float glu = gc * s;
  const bool g_passes = g < limit;
  const bool u_passes = u > -limit && u < limit;
  const float uc = clamp_range(u, -limit, limit);
  const float dglu = s + alpha * gc * s * (1.f - s);
  return {g_passes ? ga * (uc + 1.f) * dglu : 0.f, u_passes ? ga * glu : 0.f};
}

template <Activation A>
PESC_HD GatedGrad gated_backward(float g, float u, float ga) {
  return {ga * u * gated_detail::gate_derivative<A>(g), ga * gated_detail::gate_forward<A>(g)};
}

// Calls fn(kind_constant) where kind_constant is std::integral_constant<int, A> for act(g) * u with
// activation A, or <int, -1> for the clamped SwiGLU; loops over elements can then fix the kind at
// compile time.
constexpr int kClampedKind = -1;

template <typename Fn>
PESC_HD decltype(auto) with_gated_kind(const GatedKind& kind, Fn&& fn) {
  if (kind.clamped) return fn(std::integral_constant<int, kClampedKind>{});
  return with_activation(kind.act, [&](auto act) { return fn(std::integral_constant<int, int(act.value)>{}); });
}

template <int KIND>
PESC_HD float gated_value(float g, float u, const GatedKind& kind) {
  if constexpr (KIND == kClampedKind) {
    return clamped_swiglu_forward(g, u, kind.limit, kind.alpha);
  } else {
    return gated_forward<static_cast<Activation>(KIND)>(g, u);
  }
}

template <int KIND>
PESC_HD GatedGrad gated_grad(float g, float u, float ga, const GatedKind& kind) {
  if constexpr (KIND == kClampedKind) {
    return clamped_swiglu_backward(g, u, ga, kind.limit, kind.alpha);
  } else {
    return gated_backward<static_cast<Activation>(KIND)>(g, u, ga);
  }
}

}  // namespace pesc
