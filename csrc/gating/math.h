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
#pragma once

#include "core/host_device.h"
#include "core/limits.h"

namespace pesc {

// True when (a, ia) ranks strictly before (b, ib): a strict total order over (logit, index) pairs,
// so selection never depends on scan or reduction order and NaN rows still give distinct ids.
PESC_HD bool topk_ranks_before(float a, int ia, float b, int ib) {
  const bool a_nan = is_nan(a);
  const bool b_nan = is_nan(b);
  if (a_nan || b_nan) return a_nan == b_nan ? ia < ib : b_nan;
  return a > b || (a == b && ia < ib);
}

// exp(l - m): one term of the softmax denominator.
PESC_HD float softmax_term(float logit, float row_max) { return expf(logit - row_max); }

PESC_HD float softmax_prob(float logit, float row_max, float inv_sum) { return softmax_term(logit, row_max) * inv_sum; }

PESC_HD float log_sum_exp(float row_max, float sum) { return row_max + logf(sum); }

PESC_HD float renormalized_weight(float p, float selected_sum) { return p / selected_sum; }

// Backward of y = softmax(l) contracted with an upstream gradient g: p * (g - <p, g>).
PESC_HD float softmax_grad(float p, float g, float p_dot_g) { return p * (g - p_dot_g); }

// Switch load-balancing loss term for one expert, before the factor E:
//   f_e * P_e with f_e = count_e / (tokens * k) and P_e = prob_sum_e / tokens.
PESC_HD float balance_term(float count, float prob_sum, float tokens, float k) {
  return (count / (tokens * k)) * (prob_sum / tokens);
}

}  // namespace pesc
