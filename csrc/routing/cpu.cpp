// CPU kernels of grouped_topk_gating and its backward (docs/design.md, "Routing variants").
//
//   grouped_topk_gating(logits[T,E], k, scoring, bias[E]?, num_groups, topk_groups, normalize, scaling)
//       -> weights[T,k] fp32, indices[T,k] int32
//   grouped_topk_gating_backward(grad_weights[T,k], logits, indices, scoring, normalize, scaling)
//       -> grad_logits[T,E]
// logits fp32/fp16/bf16, math in fp32 through routing/math.h, the same functions the CUDA kernels
// run. Parallel over tokens, one writer per output row: no atomics, and the same bits for any
// thread count. Per token, the scores, choices and group scores go to small buffers first, so the
// selection reads memory instead of recomputing exponentials. Outputs of 64 KiB and more
// come from the reusable buffers of core/cpu_buffers.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include <torch/library.h>

#include "core/cpu_buffers.h"
#include "core/tensor_utils.h"
#include "routing/math.h"
#include "routing/ops.h"

namespace pesc {
namespace {

// Tokens per parallel task (about 16K logits).
int64_t token_grain(int64_t E) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(E, 1)); }

// One token's scores s_e into `scores` (fp32).
template <typename scalar_t>
void token_scores(const scalar_t* row, int E, RouterScore score, std::vector<float>& scores) {
  const auto logit = [row](int e) { return static_cast<float>(row[e]); };
  const ScoreStats stats = score_stats(logit, E, score);
  for (int e = 0; e < E; ++e) scores[e] = router_score(logit(e), score, stats);
}

// grouped_topk_select's result (routing/math.h) in one pass over the experts instead of k rounds.
// A group is kept when fewer than topk_groups groups rank before it; each expert of a kept group
// enters a buffer of the k best so far (ids, values), kept sorted by topk_ranks_before. That order
// is strict and total, so the buffer ends with the same experts in the same order as the rounds
// pick them (the simulated-GPU tests compare the two bitwise). O(E) for most tokens, not O(k E).
void select_in_one_pass(const float* choices, const float* groups, const GroupedTopkParams& p, int32_t* ids,
                        float* values) {
  const int group_size = p.E / p.num_groups;
  int filled = 0;
  for (int g = 0; g < p.num_groups; ++g) {
    int ranked_before = 0;
    for (int h = 0; h < p.num_groups; ++h) ranked_before += topk_ranks_before(groups[h], h, groups[g], g);
    if (ranked_before >= p.topk_groups) continue;
    for (int e = g * group_size; e < (g + 1) * group_size; ++e) {
      const float v = choices[e];
      if (filled == p.k && !topk_ranks_before(v, e, values[p.k - 1], ids[p.k - 1])) continue;
      int j = filled < p.k ? filled++ : p.k - 1;  // a full buffer drops its last
      for (; j > 0 && topk_ranks_before(v, e, values[j - 1], ids[j - 1]); --j) {
        values[j] = values[j - 1];
        ids[j] = ids[j - 1];
      }
      values[j] = v;
      ids[j] = e;
    }
  }
}

std::tuple<at::Tensor, at::Tensor> grouped_topk_gating_cpu(const at::Tensor& logits_in, int64_t k,
                                                           std::string_view scoring,
                                                           const std::optional<at::Tensor>& bias_in, int64_t num_groups,
                                                           int64_t topk_groups, bool normalize, double scaling) {
  auto [weights, indices] = reusable(
      grouped_topk_gating_outputs(logits_in, k, scoring, bias_in, num_groups, topk_groups, normalize, scaling));
  const RouterScore score = parse_router_score("pesc.grouped_topk_gating", scoring);
  const at::Tensor logits = logits_in.contiguous();
  const auto bias = contiguous_optional(bias_in);
  const GroupedTopkParams p = grouped_topk_params(logits, k, score, num_groups, topk_groups, normalize, scaling);
  const float* b = optional_data<float>(bias);
  const int64_t T = logits.size(0);
  float* w = weights.data_ptr<float>();
  int32_t* idx = indices.data_ptr<int32_t>();
  PESC_DTYPE_SWITCH(dtype_of(logits), HostTypes, [&] {
    const scalar_t* l = logits.data_ptr<scalar_t>();
    at::parallel_for(0, T, token_grain(p.E), [&](int64_t begin, int64_t end) {
      std::vector<float> scores(p.E), choices(p.E), groups(p.num_groups), selected(p.k);
      for (int64_t t = begin; t < end; ++t) {
        token_scores(l + t * p.E, p.E, score, scores);
        for (int e = 0; e < p.E; ++e) choices[e] = b == nullptr ? scores[e] : scores[e] + b[e];
        const auto choice = [&](int e) { return choices[e]; };
        for (int g = 0; g < p.num_groups; ++g) groups[g] = group_score(choice, g, p.E / p.num_groups);
        int32_t* row_idx = idx + t * p.k;
        select_in_one_pass(choices.data(), groups.data(), p, row_idx, selected.data());
        float* row_w = w + t * p.k;
        for (int j = 0; j < p.k; ++j) row_w[j] = scores[row_idx[j]];
        routed_weights(row_w, p);
      }
    });
  });
  return {weights, indices};
}

at::Tensor grouped_topk_gating_backward_cpu(const at::Tensor& grad_weights_in, const at::Tensor& logits_in,
                                            const at::Tensor& indices_in, std::string_view scoring, bool normalize,
                                            double scaling) {
  at::Tensor grad_logits = reusable_like(
      grouped_topk_gating_backward_outputs(grad_weights_in, logits_in, indices_in, scoring, normalize, scaling));
  const char* op = "pesc.grouped_topk_gating_backward";
  const RouterScore score = parse_router_score(op, scoring);
  const at::Tensor logits = logits_in.contiguous(), indices = indices_in.contiguous();
  const at::Tensor grad_weights = grad_weights_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1), k = indices.size(1);
  const GroupedTopkParams p = grouped_topk_params(logits, k, score, 1, 1, normalize, scaling);
  const int32_t* idx = indices.data_ptr<int32_t>();
  for (int64_t s = 0; s < indices.numel(); ++s) {
    TORCH_CHECK_INDEX(idx[s] >= 0 && idx[s] < E, op, ": indices holds expert id ", idx[s], " at [", s / k, ", ", s % k,
                      "], outside [0, num_experts=", E, ")");
  }
  const float* gw = grad_weights.data_ptr<float>();
  PESC_DTYPE_SWITCH(dtype_of(logits), HostTypes, [&] {
    const scalar_t* l = logits.data_ptr<scalar_t>();
    scalar_t* out = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, T, token_grain(E), [&](int64_t begin, int64_t end) {
      std::vector<float> scores(E), u(k), w(k), du(k);
      for (int64_t t = begin; t < end; ++t) {
        token_scores(l + t * E, static_cast<int>(E), score, scores);
        const int32_t* row_idx = idx + t * k;
        const float* g = gw + t * k;
        for (int64_t j = 0; j < k; ++j) u[j] = scores[row_idx[j]];
        std::copy(u.begin(), u.end(), w.begin());
        routed_weights(w.data(), p);
        float u_sum = 0.f, dot_gw = 0.f;
        for (int64_t j = 0; j < k; ++j) {
          u_sum += u[j];
          dot_gw += g[j] * w[j];
        }
        float dot_ud = 0.f;
        for (int64_t j = 0; j < k; ++j) {
          du[j] = routed_score_grad(g[j], dot_gw, u_sum, p);
          dot_ud += u[j] * du[j];
        }
        scalar_t* row = out + t * E;
        // Unselected experts first, then the selected ones overwrite their entries.
        for (int64_t e = 0; e < E; ++e)
          row[e] = static_cast<scalar_t>(score == RouterScore::Sigmoid ? 0.f : softmax_grad(scores[e], 0.f, dot_ud));
        for (int64_t j = 0; j < k; ++j) {
          const float grad =
              score == RouterScore::Sigmoid ? sigmoid_logit_grad(u[j], du[j]) : softmax_grad(u[j], du[j], dot_ud);
          row[row_idx[j]] = static_cast<scalar_t>(grad);
        }
      }
    });
  });
  return grad_logits;
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CPU, m) {
  m.impl("grouped_topk_gating", &pesc::grouped_topk_gating_cpu);
  m.impl("grouped_topk_gating_backward", &pesc::grouped_topk_gating_backward_cpu);
}
