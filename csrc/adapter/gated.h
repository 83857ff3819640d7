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
#pragma once

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
}  // namespace gated_detail

PESC_HD float clamped_swiglu_forward(float g, float u, float limit, float alpha) {
  using namespace gated_detail;
  const float gc = clamp_max(g, limit);
  return (clamp_range(u, -limit, limit) + 1.f) * gc * act_detail::sigmoid(alpha * gc);
}

template <Activation A>
PESC_HD float gated_forward(float g, float u) {
  return activation_forward<A>(g) * u;
}

// (dg, du) for upstream ga.
struct GatedGrad {
  float dg;
  float du;
};

PESC_HD GatedGrad clamped_swiglu_backward(float g, float u, float ga, float limit, float alpha) {
  using namespace gated_detail;
  const float gc = clamp_max(g, limit);
  const float s = act_detail::sigmoid(alpha * gc);
  const float glu = gc * s;
  const bool g_passes = g < limit;
  const bool u_passes = u > -limit && u < limit;
  const float uc = clamp_range(u, -limit, limit);
  const float dglu = s + alpha * gc * s * (1.f - s);
  return {g_passes ? ga * (uc + 1.f) * dglu : 0.f, u_passes ? ga * glu : 0.f};
}

template <Activation A>
PESC_HD GatedGrad gated_backward(float g, float u, float ga) {
  return {ga * u * activation_derivative<A>(g), ga * activation_forward<A>(g)};
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
