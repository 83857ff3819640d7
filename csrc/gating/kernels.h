// Launchers for the routing kernels in gating/kernels.cu. Torch-free: raw pointers, sizes and a stream.
// Layouts: logits [T, E] (dtype given by `dtype`), weights/grad_weights [T, k] fp32,
// indices [T, k] int32, mask [T] bool or nullptr, scalar grads and losses are one fp32 in device
// memory. Workspaces are allocated by the caller with the sizes the *_workspace functions give.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"

namespace pesc {

// Tokens per block in the loss reductions; also the granularity of their deterministic partials.
constexpr int64_t kLossChunkTokens = 64;
inline int64_t loss_chunks(int64_t T) { return (T + kLossChunkTokens - 1) / kLossChunkTokens; }

cudaError_t launch_topk_gating(const void* logits, DType dtype, int64_t T, int E, int k, bool normalize, float* weights,
                               int32_t* indices, cudaStream_t stream);

cudaError_t launch_topk_gating_backward(const float* grad_weights, const void* logits, DType dtype,
                                        const float* weights, const int32_t* indices, int64_t T, int E, int k,
                                        bool normalize, void* grad_logits, cudaStream_t stream);

// counts: int32 [E + 1] workspace (per-expert routed slots, then counted tokens);
// prob_partials: fp32 [loss_chunks(T) * E].
cudaError_t launch_load_balancing_loss(const void* logits, DType dtype, const int32_t* indices, const bool* mask,
                                       int64_t T, int E, int k, int32_t* counts, float* prob_partials, float* loss,
                                       cudaStream_t stream);

cudaError_t launch_load_balancing_loss_backward(const float* grad, const void* logits, DType dtype,
                                                const int32_t* indices, const bool* mask, int64_t T, int E, int k,
                                                int32_t* counts, void* grad_logits, cudaStream_t stream);

// token_count: int32 [1] workspace; lse_partials: fp32 [loss_chunks(T)].
cudaError_t launch_router_z_loss(const void* logits, DType dtype, const bool* mask, int64_t T, int E,
                                 int32_t* token_count, float* lse_partials, float* loss, cudaStream_t stream);

cudaError_t launch_router_z_loss_backward(const float* grad, const void* logits, DType dtype, const bool* mask,
                                          int64_t T, int E, int32_t* token_count, void* grad_logits,
                                          cudaStream_t stream);

}  // namespace pesc
