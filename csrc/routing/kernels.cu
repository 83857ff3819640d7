// CUDA kernels of grouped_topk_gating and its backward (docs/design.md, "Routing variants").
//
// One thread per token runs the per-token functions of routing/math.h, the ones the CPU kernel runs:
// scores, choices and group scores are recomputed from the token's logits (read through L1) when a
// selection round needs them, instead of being kept in registers, so any E <= 1024 and any group
// layout take the same simple code. The selection rounds and the weights are written straight to
// the token's rows of indices and weights. Every output has one writer: no atomics, bitwise
// reproducible, and no host sync.
#include <algorithm>

#include "core/cuda_utils.cuh"
#include "routing/kernels.h"
#include "routing/math.h"

namespace pesc {
namespace {

constexpr int kBlock = 128;

unsigned token_blocks(int64_t T) { return static_cast<unsigned>(ceil_div(T, kBlock)); }

__device__ __forceinline__ int64_t token_index() { return static_cast<int64_t>(blockIdx.x) * kBlock + threadIdx.x; }

template <typename scalar_t>
__global__ void grouped_topk_kernel(const scalar_t* __restrict__ logits, const float* __restrict__ bias, int64_t T,
                                    GroupedTopkParams p, float* __restrict__ weights, int32_t* __restrict__ indices) {
  const int64_t t = token_index();
  if (t >= T) return;
  const scalar_t* row = logits + t * p.E;
  const auto logit = [row](int e) { return to_float(row[e]); };
  const ScoreStats stats = score_stats(logit, p.E, p.score);
  const auto score = [&](int e) { return router_score(logit(e), p.score, stats); };
  const auto choice = [&](int e) { return bias == nullptr ? score(e) : score(e) + bias[e]; };
  const int group_size = p.E / p.num_groups;
  const auto group = [&](int g) { return group_score(choice, g, group_size); };
  int32_t* idx = indices + t * p.k;
  float* w = weights + t * p.k;
  grouped_topk_select(choice, group, p, idx);
  for (int j = 0; j < p.k; ++j) w[j] = score(idx[j]);
  routed_weights(w, p);
}

template <typename scalar_t>
__global__ void grouped_topk_backward_kernel(const float* __restrict__ grad_weights,
                                             const scalar_t* __restrict__ logits, const int32_t* __restrict__ indices,
                                             int64_t T, GroupedTopkParams p, scalar_t* __restrict__ grad_logits) {
  const int64_t t = token_index();
  if (t >= T) return;
  const scalar_t* row = logits + t * p.E;
  const auto logit = [row](int e) { return to_float(row[e]); };
  const ScoreStats stats = score_stats(logit, p.E, p.score);
  const auto score = [&](int e) { return router_score(logit(e), p.score, stats); };
  const int32_t* idx = indices + t * p.k;
  const float* g = grad_weights + t * p.k;
  const auto valid = [&](int j) { return idx[j] >= 0 && idx[j] < p.E; };
  // u_j, their sum, and <g, w> with w the forward's weights.
  float u_sum = 0.f;
  for (int j = 0; j < p.k; ++j) u_sum += valid(j) ? score(idx[j]) : 0.f;
  float dot_gw = 0.f;
  for (int j = 0; j < p.k; ++j) {
    const float u = valid(j) ? score(idx[j]) : 0.f;
    dot_gw += g[j] * (p.normalize ? p.scaling * u / (u_sum + kRoutingNormalizeEps) : p.scaling * u);
  }
  float dot_ud = 0.f;
  for (int j = 0; j < p.k; ++j) {
    if (valid(j)) dot_ud += score(idx[j]) * routed_score_grad(g[j], dot_gw, u_sum, p);
  }
  scalar_t* out = grad_logits + t * p.E;
  for (int e = 0; e < p.E; ++e)
    out[e] = from_float<scalar_t>(p.score == RouterScore::Sigmoid ? 0.f : softmax_grad(score(e), 0.f, dot_ud));
  for (int j = 0; j < p.k; ++j) {
    if (!valid(j)) continue;
    const float u = score(idx[j]);
    const float du = routed_score_grad(g[j], dot_gw, u_sum, p);
    out[idx[j]] =
        from_float<scalar_t>(p.score == RouterScore::Sigmoid ? sigmoid_logit_grad(u, du) : softmax_grad(u, du, dot_ud));
  }
}

}  // namespace

cudaError_t launch_grouped_topk_gating(const void* logits, DType dtype, const float* bias, int64_t T,
                                       const GroupedTopkParams& params, float* weights, int32_t* indices,
                                       cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  return PESC_DTYPE_SWITCH(dtype, DeviceTypes, [&] {
    grouped_topk_kernel<scalar_t><<<token_blocks(T), kBlock, 0, stream>>>(static_cast<const scalar_t*>(logits), bias, T,
                                                                          params, weights, indices);
    return cudaGetLastError();
  });
}

cudaError_t launch_grouped_topk_gating_backward(const float* grad_weights, const void* logits, DType dtype,
                                                const int32_t* indices, int64_t T, const GroupedTopkParams& params,
                                                void* grad_logits, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  return PESC_DTYPE_SWITCH(dtype, DeviceTypes, [&] {
    grouped_topk_backward_kernel<scalar_t><<<token_blocks(T), kBlock, 0, stream>>>(
        grad_weights, static_cast<const scalar_t*>(logits), indices, T, params, static_cast<scalar_t*>(grad_logits));
    return cudaGetLastError();
  });
}

}  // namespace pesc
