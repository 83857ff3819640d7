// CPU kernels for the routing ops (docs/design.md, "Routing"), parallel over tokens with at::parallel_for.
//
//   topk_gating(logits[T,E]) -> weights[T,k] fp32, indices[T,k] int32
//   load_balancing_loss(logits[T,E], indices[T,k], mask[T]?) -> E * sum_e f_e * P_e   (0-dim fp32)
//   router_z_loss(logits[T,E], mask[T]?) -> mean_t lse_t^2                             (0-dim fp32)
// and their backward passes (gradient to logits, in logits' dtype).
// logits may be fp32, fp16 or bf16; every row is widened to fp32 once and all math runs in fp32
// through the helpers in gating/math.h, which the CUDA kernels run too.
//
// Determinism: loss reductions sum fixed blocks of kTokensPerChunk tokens in parallel, then add the
// block partials in order, so the result does not depend on the number of threads.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include <torch/library.h>

#include "core/checks.h"
#include "core/tensor_utils.h"
#include "gating/math.h"
#include "gating/ops.h"

namespace pesc {
namespace {

constexpr int64_t kTokensPerChunk = 256;

// Tokens per parallel task: enough work per task to amortise scheduling for small E.
int64_t token_grain(int64_t E) { return std::max<int64_t>(1, 4096 / E); }

struct SoftmaxRow {
  float max;
  float sum;
  float inv_sum;
  float prob(float logit) const { return softmax_prob(logit, max, inv_sum); }
  float lse() const { return log_sum_exp(max, sum); }
};

// Widens one row of logits into `row` and returns its softmax statistics.
template <typename scalar_t>
SoftmaxRow load_softmax_row(const scalar_t* src, int64_t E, float* row) {
  float m = -INFINITY;
  for (int64_t e = 0; e < E; ++e) {
    row[e] = static_cast<float>(src[e]);
    m = fmaxf(m, row[e]);
  }
  float s = 0.f;
  for (int64_t e = 0; e < E; ++e) s += softmax_term(row[e], m);
  return {m, s, 1.f / s};
}

bool token_counts(const bool* mask, int64_t t) { return mask == nullptr || mask[t]; }

const bool* mask_ptr(const std::optional<at::Tensor>& mask, at::Tensor& holder) {
  if (!mask.has_value()) return nullptr;
  holder = mask->contiguous();
  return holder.data_ptr<bool>();
}

// Routed-slot counts per expert over the tokens that count; order-free integer sums.
struct RoutedCounts {
  std::vector<int64_t> per_expert;
  int64_t tokens = 0;
};

RoutedCounts count_routed_slots(const at::Tensor& indices, const bool* mask, int64_t E) {
  const at::Tensor idx = indices.contiguous();
  const int32_t* ids = idx.data_ptr<int32_t>();
  const int64_t T = idx.size(0), k = idx.size(1);
  RoutedCounts counts{std::vector<int64_t>(E, 0), 0};
  for (int64_t t = 0; t < T; ++t) {
    if (!token_counts(mask, t)) continue;
    ++counts.tokens;
    for (int64_t j = 0; j < k; ++j) ++counts.per_expert[ids[t * k + j]];
  }
  return counts;
}

int64_t count_tokens(const bool* mask, int64_t T) { return mask == nullptr ? T : std::count(mask, mask + T, true); }

// Sums per-token values (`token_value(t, row, stats)`, over counted tokens) deterministically into
// `width` fp32 accumulators: fixed chunks in parallel, then chunk partials in order.
template <typename scalar_t, typename TokenFn>
std::vector<float> chunked_token_sum(const scalar_t* logits, int64_t T, int64_t E, const bool* mask, int64_t width,
                                     const TokenFn& token_value) {
  const int64_t chunks = ceil_div(T, kTokensPerChunk);
  std::vector<float> partial(chunks * width, 0.f);
  at::parallel_for(0, chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    std::vector<float> row(E);
    for (int64_t c = c_begin; c < c_end; ++c) {
      float* acc = partial.data() + c * width;
      for (int64_t t = c * kTokensPerChunk; t < std::min(T, (c + 1) * kTokensPerChunk); ++t) {
        if (!token_counts(mask, t)) continue;
        const SoftmaxRow stats = load_softmax_row(logits + t * E, E, row.data());
        token_value(row.data(), stats, acc);
      }
    }
  });
  std::vector<float> total(width, 0.f);
  for (int64_t c = 0; c < chunks; ++c)
    for (int64_t i = 0; i < width; ++i) total[i] += partial[c * width + i];
  return total;
}

// Fills grad_logits (zero for tokens the mask excludes) from each counted token's logits row: the row
// is widened to fp32 and `row_grad(row, stats)` turns it in place into that token's fp32 gradient.
template <typename RowGradFn>
void softmax_row_grads(const at::Tensor& logits, const bool* mask, at::Tensor& grad_logits, const RowGradFn& row_grad) {
  const int64_t T = logits.size(0), E = logits.size(1);
  PESC_DTYPE_SWITCH(dtype_of(logits), HostTypes, [&] {
    const scalar_t* src = logits.data_ptr<scalar_t>();
    scalar_t* out = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, T, token_grain(E), [&](int64_t begin, int64_t end) {
      std::vector<float> row(E);
      for (int64_t t = begin; t < end; ++t) {
        if (!token_counts(mask, t)) continue;
        const SoftmaxRow stats = load_softmax_row(src + t * E, E, row.data());
        row_grad(row.data(), stats);
        for (int64_t e = 0; e < E; ++e) out[t * E + e] = scalar_t(row[e]);
      }
    });
  });
}

std::tuple<at::Tensor, at::Tensor> topk_gating_cpu(const at::Tensor& logits_in, int64_t k, bool normalize) {
  auto [weights, indices] = topk_gating_outputs(logits_in, k, normalize);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1);
  float* w = weights.data_ptr<float>();
  int32_t* idx = indices.data_ptr<int32_t>();
  PESC_DTYPE_SWITCH(dtype_of(logits), HostTypes, [&] {
    const scalar_t* src = logits.data_ptr<scalar_t>();
    at::parallel_for(0, T, token_grain(E), [&](int64_t begin, int64_t end) {
      std::vector<float> row(E);
      std::vector<int32_t> order(E);
      for (int64_t t = begin; t < end; ++t) {
        const SoftmaxRow stats = load_softmax_row(src + t * E, E, row.data());
        std::iota(order.begin(), order.end(), 0);
        std::partial_sort(order.begin(), order.begin() + k, order.end(),
                          [&](int32_t a, int32_t b) { return topk_ranks_before(row[a], a, row[b], b); });
        float selected_sum = 0.f;
        for (int64_t j = 0; j < k; ++j) {
          w[t * k + j] = stats.prob(row[order[j]]);
          idx[t * k + j] = order[j];
          selected_sum += w[t * k + j];
        }
        if (normalize)
          for (int64_t j = 0; j < k; ++j) w[t * k + j] = renormalized_weight(w[t * k + j], selected_sum);
      }
    });
  });
  return {weights, indices};
}

at::Tensor topk_gating_backward_cpu(const at::Tensor& grad_weights_in, const at::Tensor& logits_in,
                                    const at::Tensor& weights_in, const at::Tensor& indices_in, bool normalize) {
  at::Tensor grad_logits = topk_gating_backward_outputs(grad_weights_in, logits_in, weights_in, indices_in, normalize);
  check_expert_ids_cpu("pesc.topk_gating_backward", indices_in, logits_in.size(1), "indices");
  const at::Tensor logits = logits_in.contiguous(), grad_weights = grad_weights_in.contiguous();
  const at::Tensor weights = weights_in.contiguous(), indices = indices_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1), k = indices.size(1);
  const float* gw = grad_weights.data_ptr<float>();
  const float* w = weights.data_ptr<float>();
  const int32_t* idx = indices.data_ptr<int32_t>();
  PESC_DTYPE_SWITCH(dtype_of(logits), HostTypes, [&] {
    const scalar_t* src = logits.data_ptr<scalar_t>();
    scalar_t* grad = grad_logits.data_ptr<scalar_t>();
    at::parallel_for(0, T, token_grain(E), [&](int64_t begin, int64_t end) {
      std::vector<float> row(E);
      for (int64_t t = begin; t < end; ++t) {
        // weights are p (unnormalized) or the renormalized p over the selected set; either way the
        // Jacobian is that of a softmax over the set the weights span.
        float dot = 0.f;
        for (int64_t j = 0; j < k; ++j) dot += w[t * k + j] * gw[t * k + j];
        scalar_t* out = grad + t * E;
        if (normalize) {
          std::fill(out, out + E, scalar_t(0.f));
        } else {
          const SoftmaxRow stats = load_softmax_row(src + t * E, E, row.data());
          for (int64_t e = 0; e < E; ++e) out[e] = scalar_t(softmax_grad(stats.prob(row[e]), 0.f, dot));
        }
        for (int64_t j = 0; j < k; ++j) out[idx[t * k + j]] = scalar_t(softmax_grad(w[t * k + j], gw[t * k + j], dot));
      }
    });
  });
  return grad_logits;
}

at::Tensor load_balancing_loss_cpu(const at::Tensor& logits_in, const at::Tensor& indices,
                                   const std::optional<at::Tensor>& mask) {
  at::Tensor loss_out = load_balancing_loss_outputs(logits_in, indices, mask);
  check_expert_ids_cpu("pesc.load_balancing_loss", indices, logits_in.size(1), "indices");
  const at::Tensor logits = logits_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1), k = indices.size(1);
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const RoutedCounts counts = count_routed_slots(indices, m, E);
  float loss = 0.f;
  if (counts.tokens > 0) {
    PESC_DTYPE_SWITCH(dtype_of(logits), HostTypes, [&] {
      const std::vector<float> prob_sums = chunked_token_sum(
          logits.data_ptr<scalar_t>(), T, E, m, E, [&](const float* row, const SoftmaxRow& stats, float* acc) {
            for (int64_t e = 0; e < E; ++e) acc[e] += stats.prob(row[e]);
          });
      for (int64_t e = 0; e < E; ++e)
        loss += balance_term(static_cast<float>(counts.per_expert[e]), prob_sums[e], static_cast<float>(counts.tokens),
                             static_cast<float>(k));
      loss *= static_cast<float>(E);
    });
  }
  return loss_out.fill_(loss);
}

at::Tensor load_balancing_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits_in,
                                            const at::Tensor& indices, const std::optional<at::Tensor>& mask) {
  at::Tensor grad_logits = load_balancing_loss_backward_outputs(grad, logits_in, indices, mask);
  check_expert_ids_cpu("pesc.load_balancing_loss_backward", indices, logits_in.size(1), "indices");
  const at::Tensor logits = logits_in.contiguous();
  const int64_t E = logits.size(1), k = indices.size(1);
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const RoutedCounts counts = count_routed_slots(indices, m, E);
  grad_logits.zero_();
  if (counts.tokens == 0) return grad_logits;
  // dL/dl_te = g * (E / tokens) * p_te * (f_e - <p_t, f>), with f_e = count_e / (tokens * k).
  std::vector<float> fraction(E);
  for (int64_t e = 0; e < E; ++e)
    fraction[e] = static_cast<float>(counts.per_expert[e]) / (static_cast<float>(counts.tokens) * k);
  const float scale = grad.item<float>() * static_cast<float>(E) / static_cast<float>(counts.tokens);
  softmax_row_grads(logits, m, grad_logits, [&](float* row, const SoftmaxRow& stats) {
    float dot = 0.f;
    for (int64_t e = 0; e < E; ++e) {
      row[e] = stats.prob(row[e]);
      dot += row[e] * fraction[e];
    }
    for (int64_t e = 0; e < E; ++e) row[e] = scale * softmax_grad(row[e], fraction[e], dot);
  });
  return grad_logits;
}

at::Tensor router_z_loss_cpu(const at::Tensor& logits_in, const std::optional<at::Tensor>& mask) {
  at::Tensor loss_out = router_z_loss_outputs(logits_in, mask);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1);
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const int64_t tokens = count_tokens(m, T);
  float loss = 0.f;
  if (tokens > 0) {
    PESC_DTYPE_SWITCH(dtype_of(logits), HostTypes, [&] {
      const std::vector<float> sum = chunked_token_sum(
          logits.data_ptr<scalar_t>(), T, E, m, 1,
          [](const float*, const SoftmaxRow& stats, float* acc) { acc[0] += stats.lse() * stats.lse(); });
      loss = sum[0] / static_cast<float>(tokens);
    });
  }
  return loss_out.fill_(loss);
}

at::Tensor router_z_loss_backward_cpu(const at::Tensor& grad, const at::Tensor& logits_in,
                                      const std::optional<at::Tensor>& mask) {
  at::Tensor grad_logits = router_z_loss_backward_outputs(grad, logits_in, mask);
  const at::Tensor logits = logits_in.contiguous();
  const int64_t T = logits.size(0), E = logits.size(1);
  at::Tensor mask_holder;
  const bool* m = mask_ptr(mask, mask_holder);
  const int64_t tokens = count_tokens(m, T);
  grad_logits.zero_();
  if (tokens == 0) return grad_logits;
  // dL/dl_te = g * 2 * lse_t / tokens * p_te
  const float scale = grad.item<float>() * 2.f / static_cast<float>(tokens);
  softmax_row_grads(logits, m, grad_logits, [&](float* row, const SoftmaxRow& stats) {
    const float token_scale = scale * stats.lse();
    for (int64_t e = 0; e < E; ++e) row[e] = token_scale * stats.prob(row[e]);
  });
  return grad_logits;
}

}  // namespace
}  // namespace pesc

TORCH_LIBRARY_IMPL(pesc, CPU, m) {
  m.impl("topk_gating", &pesc::topk_gating_cpu);
  m.impl("topk_gating_backward", &pesc::topk_gating_backward_cpu);
  m.impl("load_balancing_loss", &pesc::load_balancing_loss_cpu);
  m.impl("load_balancing_loss_backward", &pesc::load_balancing_loss_backward_cpu);
  m.impl("router_z_loss", &pesc::router_z_loss_cpu);
  m.impl("router_z_loss_backward", &pesc::router_z_loss_backward_cpu);
}
