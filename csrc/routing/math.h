// Per-token math of grouped_topk_gating, shared by the CPU and CUDA kernels (host and device), in
// fp32 (docs/design.md, "Routing variants"). For one token with logits l[0..E):
//   score      s_e = softmax(l)_e or sigmoid(l_e)
//   choice     c_e = s_e + bias_e                       (bias: selection only, e.g. DeepSeek-V3's
//                                                        e_score_correction_bias; 0 without one)
//   groups     E experts in G = num_groups consecutive groups of E/G; group g's score is the sum of
//              its min(2, E/G) largest choices; the topk_groups best groups stay eligible
//   selection  the k eligible experts with the largest choices, in descending order
//   weights    u_j = s_{i_j} (unbiased);  w_j = scaling * u_j / (sum_j u_j + 1e-20) with normalize,
//              else scaling * u_j
// Every ranking uses topk_ranks_before (gating/math.h): larger first, ties to the lower index, NaN
// after every number. It is a strict total order, so each round "the best ranked after the previous
// winner" needs no marks, and a row with NaN still yields k distinct valid ids.
// Backward, for upstream g_j of w_j:
//   dL/du_j = (scaling * g_j - <g, w>) / D with normalize (D = sum u + 1e-20), else scaling * g_j
//   sigmoid:  dL/dl_e = dL/du_j * u_j (1 - u_j) for e = i_j, 0 for unselected experts
//   softmax:  dL/dl_e = s_e (G_e - sum_j u_j dL/du_j), G_e = dL/du_j for e = i_j, else 0
// The bias receives no gradient (it only picks experts).
#pragma once

#include <cstdint>

#include "core/host_device.h"
#include "gating/math.h"

namespace pesc {

enum class RouterScore : int { Softmax = 0, Sigmoid = 1 };

constexpr float kRoutingNormalizeEps = 1e-20f;  // as DeepSeek-V3's router adds to the denominator

struct GroupedTopkParams {
  int E;
  int k;
  int num_groups;
  int topk_groups;
  RouterScore score;
  bool normalize;
  float scaling;
};

// Softmax statistics of a row (unused for sigmoid scores).
struct ScoreStats {
  float max;
  float inv_sum;
};

PESC_HD float sigmoid_score(float logit) { return 1.f / (1.f + expf(-logit)); }

// logit(e) -> the token's logit of expert e, in fp32.
template <typename Logit>
PESC_HD ScoreStats score_stats(const Logit& logit, int E, RouterScore score) {
  if (score == RouterScore::Sigmoid) return {0.f, 0.f};
  float m = -INFINITY;
  for (int e = 0; e < E; ++e) {
    const float v = logit(e);
    m = (v > m || is_nan(v)) ? v : m;  // NaN wins, so the row's probabilities become NaN
  }
  float sum = 0.f;
  for (int e = 0; e < E; ++e) sum += softmax_term(logit(e), m);
  return {m, 1.f / sum};
}

PESC_HD float router_score(float logit, RouterScore score, const ScoreStats& stats) {
  return score == RouterScore::Sigmoid ? sigmoid_score(logit) : softmax_prob(logit, stats.max, stats.inv_sum);
}

// Sum of the min(2, group_size) largest choices of group g (choice(e) -> c_e).
template <typename Choice>
PESC_HD float group_score(const Choice& choice, int g, int group_size) {
  int best = -1, second = -1;
  float best_v = 0.f, second_v = 0.f;
  for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
    const float v = choice(e);
    if (best < 0 || topk_ranks_before(v, e, best_v, best)) {
      second = best;
      second_v = best_v;
      best = e;
      best_v = v;
    } else if (second < 0 || topk_ranks_before(v, e, second_v, second)) {
      second = e;
      second_v = v;
    }
  }
  return second < 0 ? best_v : best_v + second_v;
}

// The selected experts of one token into indices[0..k), best first. choice(e) -> c_e and
// group(g) -> group g's score (callers may compute either on the fly or read a buffer).
template <typename Choice, typename Group>
PESC_HD void grouped_topk_select(const Choice& choice, const Group& group, const GroupedTopkParams& p,
                                 int32_t* indices) {
  const int group_size = p.E / p.num_groups;
  // The topk_groups best groups; the last one picked bounds the eligible set.
  int last_g = -1;
  float last_gv = 0.f;
  for (int r = 0; r < p.topk_groups; ++r) {
    int best = -1;
    float best_v = 0.f;
    for (int g = 0; g < p.num_groups; ++g) {
      const float v = group(g);
      const bool after_last = last_g < 0 || topk_ranks_before(last_gv, last_g, v, g);
      if (after_last && (best < 0 || topk_ranks_before(v, g, best_v, best))) {
        best = g;
        best_v = v;
      }
    }
    last_g = best;
    last_gv = best_v;
  }
  int prev = -1;
  float prev_v = 0.f;
  for (int j = 0; j < p.k; ++j) {
    int best = -1;
    float best_v = 0.f;
    for (int g = 0; g < p.num_groups; ++g) {
      if (p.num_groups > 1 && g != last_g && !topk_ranks_before(group(g), g, last_gv, last_g)) continue;
      for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
        const float v = choice(e);
        const bool after_prev = prev < 0 || topk_ranks_before(prev_v, prev, v, e);
        if (after_prev && (best < 0 || topk_ranks_before(v, e, best_v, best))) {
          best = e;
          best_v = v;
        }
      }
    }
    indices[j] = best;
    prev = best;
    prev_v = best_v;
  }
}

// Weights from the selected experts' scores u[0..k) (in place: u becomes w).
PESC_HD void routed_weights(float* u, const GroupedTopkParams& p) {
  float sum = 0.f;
  for (int j = 0; j < p.k; ++j) sum += u[j];
  const float denominator = sum + kRoutingNormalizeEps;
  for (int j = 0; j < p.k; ++j) u[j] = p.normalize ? p.scaling * u[j] / denominator : p.scaling * u[j];
}

// dL/du_j for upstream g_j, given the selected scores u and the weights w they produced.
PESC_HD float routed_score_grad(float g, float dot_gw, float u_sum, const GroupedTopkParams& p) {
  return p.normalize ? (p.scaling * g - dot_gw) / (u_sum + kRoutingNormalizeEps) : p.scaling * g;
}

// dL/dl_e of a selected expert with score u and dL/du = du (sigmoid scores).
PESC_HD float sigmoid_logit_grad(float u, float du) { return du * u * (1.f - u); }

}  // namespace pesc
