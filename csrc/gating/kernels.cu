// CUDA kernels for the routing ops (docs/design.md, routing): top-k gating, the Switch load-balancing loss,
// the router z-loss, and their backward passes.
//
// Layouts: logits [T, E] row-major in fp32/fp16/bf16 (math in fp32); weights [T, k] fp32;
// indices [T, k] int32; mask [T] bool (True = token counts) or nullptr.
//
// Per-token work uses a group of `width` lanes (a power of two <= 32, the smallest covering E up to
// a full warp) so that small E packs several tokens into one warp. Each lane keeps VPT = width-
// strided logits of its row in registers (width * VPT >= E; VPT <= 32 covers E <= 1024). Softmax
// statistics and the k selection rounds are butterfly reductions inside the group.
// Top-k: round j picks the best (logit, index) ranked after round j-1's winner under the strict
// total order topk_ranks_before, so no "taken" marks are needed and NaN rows still yield k
// distinct valid ids.
//
// Loss reductions never use float atomics: a block per chunk of kLossChunkTokens tokens writes
// partial sums, and a single-block finalize kernel adds them in a fixed order. Integer atomics
// (routed-slot counts) are exact, hence order-independent. No kernel reads a value back to the host.
#include <cuda_runtime.h>

#include <algorithm>

#include "gating/math.h"
#include "core/cuda_utils.cuh"
#include "gating/kernels.h"

namespace pesc {
namespace {

constexpr int kTokenBlock = 128;     // threads per block for per-token kernels
constexpr int kChunkBlock = 256;     // threads per block for the chunked loss reduction
constexpr int kFinalizeBlock = 256;  // threads of the single finalize block

struct GroupShape {
  int width;  // lanes per token
  int vpt;    // logits per lane
};

GroupShape group_shape(int E) {
  int width = 1;
  while (width < E && width < 32) width *= 2;
  int vpt = 1;
  while (width * vpt < E) vpt *= 2;
  return {width, vpt};
}

// Binds constexpr VPT to the runtime values-per-lane count (a power of two in [1, 32]).
#define PESC_DISPATCH_VPT(VPT_VALUE, ...)             \
  [&]() -> cudaError_t {                              \
    switch (VPT_VALUE) {                              \
      case 1: { constexpr int VPT = 1; return __VA_ARGS__(); }   \
      case 2: { constexpr int VPT = 2; return __VA_ARGS__(); }   \
      case 4: { constexpr int VPT = 4; return __VA_ARGS__(); }   \
      case 8: { constexpr int VPT = 8; return __VA_ARGS__(); }   \
      case 16: { constexpr int VPT = 16; return __VA_ARGS__(); } \
      case 32: { constexpr int VPT = 32; return __VA_ARGS__(); } \
    }                                                 \
    return cudaErrorInvalidValue;                     \
  }()

// The token and lane a thread works on in a per-token kernel.
struct TokenLane {
  int64_t token;
  int lane;
  bool active;  // token < T; inactive lanes still join every shuffle
};

__device__ __forceinline__ TokenLane token_lane(int width, int64_t T) {
  const int64_t tokens_per_block = kTokenBlock / width;
  const int64_t token = blockIdx.x * tokens_per_block + threadIdx.x / width;
  return {token, static_cast<int>(threadIdx.x % width), token < T};
}

__device__ __forceinline__ bool token_counts(const bool* mask, int64_t t) { return mask == nullptr || mask[t]; }

template <int VPT>
struct RowRegisters {
  float v[VPT];
  float max;
  float inv_sum;
  float sum;
};

// Loads this lane's logits of `row` (expert lane + i * width) and the row's softmax statistics.
// Slots past E hold -inf; inactive lanes load nothing.
template <typename scalar_t, int VPT>
__device__ __forceinline__ RowRegisters<VPT> load_row(const scalar_t* row, int E, int lane, int width, bool active) {
  RowRegisters<VPT> r;
  float m = -INFINITY;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int e = lane + i * width;
    r.v[i] = (active && e < E) ? to_float(row[e]) : -INFINITY;
    if (e < E) m = fmaxf(m, r.v[i]);
  }
  r.max = group_max(m, width);
  float s = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    if (lane + i * width < E) s += softmax_term(r.v[i], r.max);
  }
  r.sum = group_sum(s, width);
  r.inv_sum = 1.f / r.sum;
  return r;
}

template <typename scalar_t, int VPT>
__global__ void topk_gating_kernel(const scalar_t* __restrict__ logits, int64_t T, int E, int k, int width,
                                   bool normalize, float* __restrict__ weights, int32_t* __restrict__ indices) {
  const TokenLane tl = token_lane(width, T);
  const RowRegisters<VPT> r = load_row<scalar_t, VPT>(logits + (tl.active ? tl.token : 0) * E, E, tl.lane, width,
                                                      tl.active);
  float* w = weights + tl.token * k;
  int32_t* idx = indices + tl.token * k;
  float prev_v = 0.f;
  int prev_i = -1;
  float selected_sum = 0.f;
  for (int j = 0; j < k; ++j) {
    float best_v = 0.f;
    int best_i = -1;
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int e = tl.lane + i * width;
      const bool eligible = e < E && (prev_i < 0 || topk_ranks_before(prev_v, prev_i, r.v[i], e));
      if (eligible && (best_i < 0 || topk_ranks_before(r.v[i], e, best_v, best_i))) {
        best_v = r.v[i];
        best_i = e;
      }
    }
    for (int offset = width / 2; offset > 0; offset /= 2) {
      const float other_v = __shfl_xor_sync(kFullWarpMask, best_v, offset, width);
      const int other_i = __shfl_xor_sync(kFullWarpMask, best_i, offset, width);
      if (other_i >= 0 && (best_i < 0 || topk_ranks_before(other_v, other_i, best_v, best_i))) {
        best_v = other_v;
        best_i = other_i;
      }
    }
    const float p = softmax_prob(best_v, r.max, r.inv_sum);
    selected_sum += p;
    if (tl.active && tl.lane == j % width) {
      w[j] = p;
      idx[j] = best_i;
    }
    prev_v = best_v;
    prev_i = best_i;
  }
  // Each lane rescales only the slots it wrote itself, so no synchronisation is needed.
  if (normalize && tl.active) {
    for (int j = tl.lane; j < k; j += width) w[j] = renormalized_weight(w[j], selected_sum);
  }
}

template <typename scalar_t, int VPT>
__global__ void topk_gating_backward_kernel(const float* __restrict__ grad_weights, const scalar_t* __restrict__ logits,
                                            const float* __restrict__ weights, const int32_t* __restrict__ indices,
                                            int64_t T, int E, int k, int width, bool normalize,
                                            scalar_t* __restrict__ grad_logits) {
  const TokenLane tl = token_lane(width, T);
  const int64_t t = tl.active ? tl.token : 0;
  const float* w = weights + t * k;
  const float* gw = grad_weights + t * k;
  const int32_t* idx = indices + t * k;
  scalar_t* out = grad_logits + t * E;
  float dot = 0.f;
  if (tl.active) {
    for (int j = tl.lane; j < k; j += width) dot += w[j] * gw[j];
  }
  dot = group_sum(dot, width);
  // Pass 1: the gradient of every expert outside the selected set (0 when renormalized).
  if (normalize) {
    if (tl.active) {
      for (int e = tl.lane; e < E; e += width) out[e] = from_float<scalar_t>(0.f);
    }
  } else {
    const RowRegisters<VPT> r = load_row<scalar_t, VPT>(logits + t * E, E, tl.lane, width, tl.active);
#pragma unroll
    for (int i = 0; i < VPT; ++i) {
      const int e = tl.lane + i * width;
      if (tl.active && e < E) out[e] = from_float<scalar_t>(softmax_grad(softmax_prob(r.v[i], r.max, r.inv_sum), 0.f, dot));
    }
  }
  // Pass 2 overwrites the selected experts; __syncwarp orders pass 1's stores before it.
  __syncwarp();
  if (tl.active) {
    for (int j = tl.lane; j < k; j += width) {
      const int e = idx[j];
      if (e >= 0 && e < E) out[e] = from_float<scalar_t>(softmax_grad(w[j], gw[j], dot));
    }
  }
}

// counts[e] += routed slots of counted tokens with id e (ids outside [0, E) are skipped);
// counts[E] += counted tokens. With indices == nullptr only tokens are counted (k is ignored).
__global__ void routed_count_kernel(const int32_t* __restrict__ indices, const bool* __restrict__ mask, int64_t T,
                                    int k, int E, int32_t* __restrict__ counts) {
  const int64_t slots = indices == nullptr ? T : T * k;
  const int slot_k = indices == nullptr ? 1 : k;
  for (int64_t s = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; s < slots;
       s += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = s / slot_k;
    if (!token_counts(mask, t)) continue;
    if (s % slot_k == 0) atomicAdd(counts + E, 1);
    if (indices != nullptr) {
      const int e = indices[s];
      if (e >= 0 && e < E) atomicAdd(counts + e, 1);
    }
  }
}

// One block per chunk of kLossChunkTokens tokens. Phase 1: each token's softmax statistics into
// shared memory (groups of `width` lanes). Phase 2: prob_partials[chunk, e] = sum_t p_te over
// counted tokens (thread per expert, tokens in order). Phase 3: lse_partials[chunk] = sum_t lse_t^2.
template <typename scalar_t, int VPT>
__global__ void router_chunk_kernel(const scalar_t* __restrict__ logits, const bool* __restrict__ mask, int64_t T,
                                    int E, int width, float* __restrict__ prob_partials,
                                    float* __restrict__ lse_partials) {
  __shared__ float row_max[kLossChunkTokens];
  __shared__ float row_inv_sum[kLossChunkTokens];
  __shared__ float row_lse[kLossChunkTokens];
  __shared__ bool row_counts[kLossChunkTokens];
  const int64_t chunk_begin = blockIdx.x * kLossChunkTokens;
  const int groups = kChunkBlock / width;
  const int group = threadIdx.x / width;
  const int lane = threadIdx.x % width;
  for (int base = 0; base < kLossChunkTokens; base += groups) {
    const int local = base + group;
    const int64_t t = chunk_begin + local;
    const bool active = local < kLossChunkTokens && t < T && token_counts(mask, t);
    const RowRegisters<VPT> r = load_row<scalar_t, VPT>(logits + (active ? t : 0) * E, E, lane, width, active);
    if (local < kLossChunkTokens && lane == 0) {
      row_max[local] = r.max;
      row_inv_sum[local] = r.inv_sum;
      row_lse[local] = log_sum_exp(r.max, r.sum);
      row_counts[local] = active;
    }
  }
  __syncthreads();
  const int chunk_tokens = static_cast<int>(T - chunk_begin < kLossChunkTokens ? T - chunk_begin : kLossChunkTokens);
  if (prob_partials != nullptr) {
    for (int e = threadIdx.x; e < E; e += kChunkBlock) {
      float acc = 0.f;
      for (int local = 0; local < chunk_tokens; ++local) {
        if (row_counts[local])
          acc += softmax_prob(to_float(logits[(chunk_begin + local) * E + e]), row_max[local], row_inv_sum[local]);
      }
      prob_partials[blockIdx.x * static_cast<int64_t>(E) + e] = acc;
    }
  }
  if (lse_partials != nullptr && threadIdx.x == 0) {
    float acc = 0.f;
    for (int local = 0; local < chunk_tokens; ++local) {
      if (row_counts[local]) acc += row_lse[local] * row_lse[local];
    }
    lse_partials[blockIdx.x] = acc;
  }
}

// loss = E * sum_e f_e * P_e (0 without counted tokens); chunk partials are added in order.
__global__ void balance_finalize_kernel(const float* __restrict__ prob_partials, int64_t chunks,
                                        const int32_t* __restrict__ counts, int E, int k, float* __restrict__ loss) {
  __shared__ float scratch[kFinalizeBlock];
  const float tokens = static_cast<float>(counts[E]);
  float term = 0.f;
  for (int e = threadIdx.x; e < E; e += kFinalizeBlock) {
    float prob_sum = 0.f;
    for (int64_t c = 0; c < chunks; ++c) prob_sum += prob_partials[c * E + e];
    if (tokens > 0.f) term += balance_term(static_cast<float>(counts[e]), prob_sum, tokens, static_cast<float>(k));
  }
  const float total = block_sum<kFinalizeBlock>(term, scratch);
  if (threadIdx.x == 0) *loss = tokens > 0.f ? static_cast<float>(E) * total : 0.f;
}

// loss = sum_c lse_partials[c] / tokens (0 without counted tokens).
__global__ void z_loss_finalize_kernel(const float* __restrict__ lse_partials, int64_t chunks,
                                       const int32_t* __restrict__ token_count, float* __restrict__ loss) {
  __shared__ float scratch[kFinalizeBlock];
  float acc = 0.f;
  for (int64_t c = threadIdx.x; c < chunks; c += kFinalizeBlock) acc += lse_partials[c];
  const float total = block_sum<kFinalizeBlock>(acc, scratch);
  const float tokens = static_cast<float>(*token_count);
  if (threadIdx.x == 0) *loss = tokens > 0.f ? total / tokens : 0.f;
}

// dL/dl_te = g * (E / tokens) * p_te * (f_e - <p_t, f>), f_e = count_e / (tokens * k); 0 if masked.
template <typename scalar_t, int VPT>
__global__ void balance_backward_kernel(const float* __restrict__ grad, const scalar_t* __restrict__ logits,
                                        const bool* __restrict__ mask, const int32_t* __restrict__ counts, int64_t T,
                                        int E, int k, int width, scalar_t* __restrict__ grad_logits) {
  const TokenLane tl = token_lane(width, T);
  const bool counted = tl.active && token_counts(mask, tl.token);
  const int64_t t = tl.active ? tl.token : 0;
  const RowRegisters<VPT> r = load_row<scalar_t, VPT>(logits + t * E, E, tl.lane, width, counted);
  const float tokens = static_cast<float>(counts[E]);
  float p[VPT], f[VPT];
  float dot = 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int e = tl.lane + i * width;
    p[i] = softmax_prob(r.v[i], r.max, r.inv_sum);
    f[i] = e < E ? static_cast<float>(counts[e]) / (tokens * static_cast<float>(k)) : 0.f;
    if (e < E) dot += p[i] * f[i];
  }
  dot = group_sum(dot, width);
  if (!tl.active) return;
  const float scale = counted ? *grad * static_cast<float>(E) / tokens : 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int e = tl.lane + i * width;
    if (e < E) grad_logits[t * E + e] = from_float<scalar_t>(counted ? scale * softmax_grad(p[i], f[i], dot) : 0.f);
  }
}

// dL/dl_te = g * 2 * lse_t / tokens * p_te; 0 if masked.
template <typename scalar_t, int VPT>
__global__ void z_loss_backward_kernel(const float* __restrict__ grad, const scalar_t* __restrict__ logits,
                                       const bool* __restrict__ mask, const int32_t* __restrict__ token_count,
                                       int64_t T, int E, int width, scalar_t* __restrict__ grad_logits) {
  const TokenLane tl = token_lane(width, T);
  const bool counted = tl.active && token_counts(mask, tl.token);
  const int64_t t = tl.active ? tl.token : 0;
  const RowRegisters<VPT> r = load_row<scalar_t, VPT>(logits + t * E, E, tl.lane, width, counted);
  if (!tl.active) return;
  const float scale = counted ? *grad * 2.f * log_sum_exp(r.max, r.sum) / static_cast<float>(*token_count) : 0.f;
#pragma unroll
  for (int i = 0; i < VPT; ++i) {
    const int e = tl.lane + i * width;
    if (e < E) grad_logits[t * E + e] = from_float<scalar_t>(counted ? scale * softmax_prob(r.v[i], r.max, r.inv_sum) : 0.f);
  }
}

int64_t token_blocks(int64_t T, int width) { return ceil_div(T, kTokenBlock / width); }

cudaError_t count_routed_slots(const int32_t* indices, const bool* mask, int64_t T, int k, int E, int32_t* counts,
                               cudaStream_t stream) {
  PESC_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(counts, 0, sizeof(int32_t) * (E + 1), stream));
  const int64_t slots = indices == nullptr ? T : T * k;
  if (slots == 0) return cudaSuccess;
  const int blocks = static_cast<int>(std::min<int64_t>(ceil_div(slots, 256), 4096));
  routed_count_kernel<<<blocks, 256, 0, stream>>>(indices, mask, T, k, E, counts);
  PESC_CUDA_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t launch_router_chunks(const void* logits, DType dtype, const bool* mask, int64_t T, int E,
                                 float* prob_partials, float* lse_partials, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  const GroupShape shape = group_shape(E);
  return PESC_CUDA_DISPATCH_DTYPE(dtype, [&] {
    return PESC_DISPATCH_VPT(shape.vpt, [&] {
      router_chunk_kernel<scalar_t, VPT><<<loss_chunks(T), kChunkBlock, 0, stream>>>(
          static_cast<const scalar_t*>(logits), mask, T, E, shape.width, prob_partials, lse_partials);
      return cudaGetLastError();
    });
  });
}

}  // namespace

cudaError_t launch_topk_gating(const void* logits, DType dtype, int64_t T, int E, int k, bool normalize,
                               float* weights, int32_t* indices, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  const GroupShape shape = group_shape(E);
  return PESC_CUDA_DISPATCH_DTYPE(dtype, [&] {
    return PESC_DISPATCH_VPT(shape.vpt, [&] {
      topk_gating_kernel<scalar_t, VPT><<<token_blocks(T, shape.width), kTokenBlock, 0, stream>>>(
          static_cast<const scalar_t*>(logits), T, E, k, shape.width, normalize, weights, indices);
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_topk_gating_backward(const float* grad_weights, const void* logits, DType dtype,
                                        const float* weights, const int32_t* indices, int64_t T, int E, int k,
                                        bool normalize, void* grad_logits, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  const GroupShape shape = group_shape(E);
  return PESC_CUDA_DISPATCH_DTYPE(dtype, [&] {
    return PESC_DISPATCH_VPT(shape.vpt, [&] {
      topk_gating_backward_kernel<scalar_t, VPT><<<token_blocks(T, shape.width), kTokenBlock, 0, stream>>>(
          grad_weights, static_cast<const scalar_t*>(logits), weights, indices, T, E, k, shape.width, normalize,
          static_cast<scalar_t*>(grad_logits));
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_load_balancing_loss(const void* logits, DType dtype, const int32_t* indices, const bool* mask,
                                       int64_t T, int E, int k, int32_t* counts, float* prob_partials, float* loss,
                                       cudaStream_t stream) {
  PESC_CUDA_RETURN_IF_ERROR(count_routed_slots(indices, mask, T, k, E, counts, stream));
  PESC_CUDA_RETURN_IF_ERROR(launch_router_chunks(logits, dtype, mask, T, E, prob_partials, nullptr, stream));
  balance_finalize_kernel<<<1, kFinalizeBlock, 0, stream>>>(prob_partials, loss_chunks(T), counts, E, k, loss);
  PESC_CUDA_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t launch_load_balancing_loss_backward(const float* grad, const void* logits, DType dtype,
                                                const int32_t* indices, const bool* mask, int64_t T, int E, int k,
                                                int32_t* counts, void* grad_logits, cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  PESC_CUDA_RETURN_IF_ERROR(count_routed_slots(indices, mask, T, k, E, counts, stream));
  const GroupShape shape = group_shape(E);
  return PESC_CUDA_DISPATCH_DTYPE(dtype, [&] {
    return PESC_DISPATCH_VPT(shape.vpt, [&] {
      balance_backward_kernel<scalar_t, VPT><<<token_blocks(T, shape.width), kTokenBlock, 0, stream>>>(
          grad, static_cast<const scalar_t*>(logits), mask, counts, T, E, k, shape.width,
          static_cast<scalar_t*>(grad_logits));
      return cudaGetLastError();
    });
  });
}

cudaError_t launch_router_z_loss(const void* logits, DType dtype, const bool* mask, int64_t T, int E,
                                 int32_t* token_count, float* lse_partials, float* loss, cudaStream_t stream) {
  PESC_CUDA_RETURN_IF_ERROR(count_routed_slots(nullptr, mask, T, 1, 0, token_count, stream));
  PESC_CUDA_RETURN_IF_ERROR(launch_router_chunks(logits, dtype, mask, T, E, nullptr, lse_partials, stream));
  z_loss_finalize_kernel<<<1, kFinalizeBlock, 0, stream>>>(lse_partials, loss_chunks(T), token_count, loss);
  PESC_CUDA_LAUNCH_CHECK();
  return cudaSuccess;
}

cudaError_t launch_router_z_loss_backward(const float* grad, const void* logits, DType dtype, const bool* mask,
                                          int64_t T, int E, int32_t* token_count, void* grad_logits,
                                          cudaStream_t stream) {
  if (T == 0) return cudaSuccess;
  PESC_CUDA_RETURN_IF_ERROR(count_routed_slots(nullptr, mask, T, 1, 0, token_count, stream));
  const GroupShape shape = group_shape(E);
  return PESC_CUDA_DISPATCH_DTYPE(dtype, [&] {
    return PESC_DISPATCH_VPT(shape.vpt, [&] {
      z_loss_backward_kernel<scalar_t, VPT><<<token_blocks(T, shape.width), kTokenBlock, 0, stream>>>(
          grad, static_cast<const scalar_t*>(logits), mask, token_count, T, E, shape.width,
          static_cast<scalar_t*>(grad_logits));
      return cudaGetLastError();
    });
  });
}

}  // namespace pesc
