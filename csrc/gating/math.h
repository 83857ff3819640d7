// Per-row routing math shared by the CPU and CUDA gating kernels (host and device).
//
// For one token with logits l[0..E) (any float dtype, computed in fp32):
//   m = max_e l_e,  s = sum_e exp(l_e - m),  p_e = exp(l_e - m) / s,  lse = m + log(s)
//   top-k order: larger logit first, ties to the lower expert index, NaN after every number.
//     The logit order equals the order of p in exact arithmetic; ranking logits avoids ties that
//     rounding in exp() would create, and makes CPU and GPU pick the same experts.
//   normalized weight: w_j = p_{i_j} / sum_{j'} p_{i_j'} (the sum taken in selection order)
//   softmax backward:  dL/dl_e = p_e * (g_e - sum_e' p_e' g_e')
// A row of all -inf, or with a NaN or +inf, gives NaN probabilities, as torch.softmax does.
//
// Lanes. The per-element formulas are templates over a lane type F: float (the CUDA kernels, one
// token per thread group) or, in the CPU kernels, a SIMD vector of floats holding one token per
// lane (gating/cpu_kernels_impl.h). A vector lane evaluates exactly the scalar expression;
// LaneMath<F> supplies what differs per lane type: exp and log (expf/logf for float; ATen's
// vectorised exp_u20, within 20 ulp of expf, and Sleef's 1-ulp log for vectors), the float's bits,
// and a lane-wise select.
#pragma once

#include <cstdint>
#include <cstring>

#include "core/host_device.h"
#include "core/limits.h"

namespace pesc {

template <typename F>
struct LaneMath;

template <>
struct LaneMath<float> {
  using Int = int32_t;
  static PESC_HD float exp(float x) { return expf(x); }
  static PESC_HD float log(float x) { return logf(x); }
  static PESC_HD int32_t bits(float x) {
#if defined(__CUDA_ARCH__)
    return __float_as_int(x);
#else
    int32_t b;
    std::memcpy(&b, &x, sizeof b);
    return b;
#endif
  }
  static PESC_HD int32_t select(bool mask, int32_t if_true, int32_t if_false) { return mask ? if_true : if_false; }
};

// True when (a, ia) ranks strictly before (b, ib): a strict total order over (logit, index) pairs,
// so selection never depends on scan or reduction order and NaN rows still give distinct ids.
PESC_HD bool topk_ranks_before(float a, int ia, float b, int ib) {
  const bool a_nan = is_nan(a);
  const bool b_nan = is_nan(b);
  if (a_nan || b_nan) return a_nan == b_nan ? ia < ib : b_nan;
  return a > b || (a == b && ia < ib);
}

// The same order as an integer key, for branch-free selection on SIMD lanes:
//   topk_ranks_before(a, ia, b, ib) == (key(a) > key(b) || (key(a) == key(b) && ia < ib)).
// Numbers map to their bits made order-preserving (negative floats have their magnitude bits
// flipped), after l + 0 turns -0 into +0 (the two compare equal, so they must tie); every NaN maps to
// kTopkNanKey, below -inf's key. kTopkEmptyKey, lower still, marks a slot no expert has filled.
constexpr int32_t kTopkEmptyKey = INT32_MIN;
constexpr int32_t kTopkNanKey = INT32_MIN + 1;

template <typename F>
PESC_HD typename LaneMath<F>::Int topk_order_key(F logit) {
  using Int = typename LaneMath<F>::Int;
  const Int bits = LaneMath<F>::bits(logit + F(0.f));
  const Int key = bits ^ ((bits >> Int(31)) & Int(0x7fffffff));
  return LaneMath<F>::select(logit != logit, Int(kTopkNanKey), key);
}

// exp(l - m): one term of the softmax denominator.
template <typename F>
PESC_HD F softmax_term(F logit, F row_max) {
  return LaneMath<F>::exp(logit - row_max);
}

template <typename F>
PESC_HD F softmax_inv_sum(F sum) {
  return F(1.f) / sum;
}

// p from a term computed earlier: softmax_prob(l, m, 1/s) == softmax_prob_of_term(softmax_term(l, m), 1/s).
template <typename F>
PESC_HD F softmax_prob_of_term(F term, F inv_sum) {
  return term * inv_sum;
}

template <typename F>
PESC_HD F softmax_prob(F logit, F row_max, F inv_sum) {
  return softmax_prob_of_term(softmax_term(logit, row_max), inv_sum);
}

template <typename F>
PESC_HD F log_sum_exp(F row_max, F sum) {
  return row_max + LaneMath<F>::log(sum);
}

template <typename F>
PESC_HD F renormalized_weight(F p, F selected_sum) {
  return p / selected_sum;
}

// Backward of y = softmax(l) contracted with an upstream gradient g: p * (g - <p, g>).
template <typename F>
PESC_HD F softmax_grad(F p, F g, F p_dot_g) {
  return p * (g - p_dot_g);
}

// The fraction f_e = count_e / (tokens * k) of the counted tokens' routed slots that went to expert e.
PESC_HD float routed_fraction(float count, float tokens, float k) { return count / (tokens * k); }

// Switch load-balancing loss term for one expert, before the factor E:
//   f_e * P_e with P_e = prob_sum_e / tokens.
PESC_HD float balance_term(float count, float prob_sum, float tokens, float k) {
  return routed_fraction(count, tokens, k) * (prob_sum / tokens);
}

}  // namespace pesc
